//! The streamed body of `GET /monitor`: newline-delimited JSON, one [`MonitorEvent`] per line,
//! each line sent as its own chunk as soon as the event arrives. A reader that falls behind the
//! agent's queue gets a `{"type":"lost","lost":N,...}` record in place of the events it
//! missed. The stream ends when the agent stops publishing events; when the client goes away,
//! hyper drops the body and with it the broadcast receiver (no task is left behind: the body
//! owns the receiver, nothing else does).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use cilium_api::models::MonitorEvent;
use hyper::body::{Body, Frame};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use crate::datapath::monitor;

/// Content type of the monitor stream.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// The `?type=` filter of `GET /monitor`. "lost" records always pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorFilter {
    Drop,
    Trace,
    Debug,
    L7,
}

impl MonitorFilter {
    /// The record kind this filter keeps.
    pub fn kind(self) -> &'static str {
        match self {
            MonitorFilter::Drop => monitor::KIND_DROP,
            MonitorFilter::Trace => monitor::KIND_TRACE,
            MonitorFilter::Debug => monitor::KIND_DEBUG,
            MonitorFilter::L7 => monitor::KIND_L7,
        }
    }

    /// Whether a record passes.
    pub fn matches(self, ev: &MonitorEvent) -> bool {
        ev.kind == self.kind() || ev.kind == monitor::KIND_LOST
    }
}

impl FromStr for MonitorFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(MonitorFilter::Drop),
            "trace" => Ok(MonitorFilter::Trace),
            "debug" => Ok(MonitorFilter::Debug),
            "l7" => Ok(MonitorFilter::L7),
            other => Err(format!(
                "invalid event type '{other}': expected drop, trace, debug or l7"
            )),
        }
    }
}

impl fmt::Display for MonitorFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

type Events = Receiver<Arc<MonitorEvent>>;
type Next = Pin<Box<dyn Future<Output = (Events, Result<Arc<MonitorEvent>, RecvError>)> + Send>>;

/// Waits for the next event; hands the receiver back so that the next wait can reuse it.
fn next(mut events: Events) -> Next {
    Box::pin(async move {
        let result = events.recv().await;
        (events, result)
    })
}

/// The body of a monitor reply.
pub struct MonitorStream {
    /// The pending wait for the next event; `None` once the agent closed the channel.
    pending: Option<Next>,
    filter: Option<MonitorFilter>,
    /// Told how many events this reader missed (the agent counts them for `cilium status`).
    on_lost: Option<LostHook>,
}

/// Where a stream reports the events its reader missed.
pub type LostHook = Box<dyn Fn(u64) + Send + Sync>;

impl fmt::Debug for MonitorStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorStream")
            .field("open", &self.pending.is_some())
            .field("filter", &self.filter)
            .finish()
    }
}

impl MonitorStream {
    pub fn new(events: Events, filter: Option<MonitorFilter>) -> Self {
        MonitorStream {
            pending: Some(next(events)),
            filter,
            on_lost: None,
        }
    }

    /// Reports missed events to `hook` as well as to the reader.
    pub fn with_lost_hook(mut self, hook: LostHook) -> Self {
        self.on_lost = Some(hook);
        self
    }
}

/// One record as a line of the stream.
fn line(ev: &MonitorEvent) -> Option<Bytes> {
    // The models hold strings and numbers only; encoding cannot fail.
    let mut text = serde_json::to_vec(ev).ok()?;
    text.push(b'\n');
    Some(Bytes::from(text))
}

impl Body for MonitorStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            let Some(pending) = this.pending.as_mut() else {
                return Poll::Ready(None);
            };
            let (events, result) = ready!(pending.as_mut().poll(cx));
            let record = match result {
                Ok(ev) => ev,
                Err(RecvError::Lagged(n)) => {
                    if let Some(hook) = &this.on_lost {
                        hook(n);
                    }
                    Arc::new(monitor::lost(n))
                }
                Err(RecvError::Closed) => {
                    this.pending = None;
                    return Poll::Ready(None);
                }
            };
            this.pending = Some(next(events));
            if this.filter.is_some_and(|f| !f.matches(&record)) {
                continue;
            }
            if let Some(bytes) = line(&record) {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::broadcast;

    use super::*;

    fn record(kind: &str, code: u8) -> Arc<MonitorEvent> {
        Arc::new(MonitorEvent {
            kind: kind.to_string(),
            code,
            message: format!("{kind} {code}"),
            summary: "10.0.0.1 -> 10.0.0.2 EchoRequest".into(),
            ..MonitorEvent::default()
        })
    }

    async fn next_record(stream: &mut MonitorStream) -> Option<MonitorEvent> {
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.frame())
            .await
            .expect("a frame within 5 s")?
            .unwrap();
        let data = frame.into_data().unwrap();
        assert_eq!(data.last(), Some(&b'\n'));
        assert_eq!(data.iter().filter(|&&b| b == b'\n').count(), 1);
        Some(serde_json::from_slice(&data).unwrap())
    }

    #[test]
    fn filters() {
        assert_eq!("drop".parse(), Ok(MonitorFilter::Drop));
        assert_eq!("trace".parse(), Ok(MonitorFilter::Trace));
        assert_eq!("debug".parse(), Ok(MonitorFilter::Debug));
        assert_eq!("l7".parse(), Ok(MonitorFilter::L7));
        assert!("Drop"
            .parse::<MonitorFilter>()
            .unwrap_err()
            .contains("drop, trace, debug or l7"));
        assert!(MonitorFilter::Drop.matches(&record("drop", 133)));
        assert!(MonitorFilter::Drop.matches(&monitor::lost(3)));
        assert!(!MonitorFilter::Drop.matches(&record("trace", 1)));
    }

    #[tokio::test]
    async fn lines_filter_lost_and_close() {
        let (tx, rx) = broadcast::channel(4);
        let mut stream = MonitorStream::new(rx, Some(MonitorFilter::Drop));
        tx.send(record("trace", 1)).unwrap();
        tx.send(record("drop", 133)).unwrap();
        let got = next_record(&mut stream).await.unwrap();
        assert_eq!((got.kind.as_str(), got.code), ("drop", 133));

        // Overrun the queue of 4: the reader learns how many it lost, then reads on.
        for code in 0..7 {
            tx.send(record("drop", code)).unwrap();
        }
        let got = next_record(&mut stream).await.unwrap();
        assert_eq!((got.kind.as_str(), got.lost), ("lost", 3));
        for code in 3..7 {
            assert_eq!(next_record(&mut stream).await.unwrap().code, code);
        }

        drop(tx);
        assert!(next_record(&mut stream).await.is_none());
        assert!(stream.is_end_stream());
        assert!(next_record(&mut stream).await.is_none());
    }

    /// Reads from `io` into `seen` until its text contains `needle`; returns the text.
    async fn read_until(
        io: &mut tokio::net::UnixStream,
        seen: &mut Vec<u8>,
        needle: &str,
    ) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(seen).into_owned();
            if text.contains(needle) {
                return text;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
                .await
                .expect("data within 5 s")
                .unwrap();
            assert!(n > 0, "connection closed early: {text}");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    /// Serves a monitor stream over a real HTTP/1 connection: the head arrives before any
    /// event, each event arrives as its own chunk, and a client that hangs up releases the
    /// subscription.
    #[tokio::test]
    async fn client_disconnect_drops_the_subscription() {
        let (tx, rx) = broadcast::channel::<Arc<MonitorEvent>>(16);
        let rx = std::sync::Mutex::new(Some(rx));
        let (server_io, mut client_io) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                let rx = rx.lock().unwrap().take().unwrap();
                async move {
                    let mut response =
                        http::Response::new(MonitorStream::new(rx, None).boxed_unsync());
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(CONTENT_TYPE),
                    );
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(server_io), service)
                .await;
        });

        client_io
            .write_all(b"GET /v1/monitor HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let head = read_until(&mut client_io, &mut seen, "\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/x-ndjson"),
            "{head}"
        );
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(tx.receiver_count(), 1);

        tx.send(record("drop", 133)).unwrap();
        let text = read_until(&mut client_io, &mut seen, "EchoRequest").await;
        assert!(text.contains(r#"{"type":"drop","code":133"#), "{text}");

        drop(client_io);
        // With no event to write, the server still notices the hang-up.
        tokio::time::timeout(Duration::from_secs(5), async {
            while tx.receiver_count() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the subscription is dropped after the client disconnects");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the connection task ends")
            .unwrap();
    }
}
