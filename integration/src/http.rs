//! A small HTTP/1.1 server and client over real sockets inside test namespaces, for the L7
//! proxy's tests and benchmark: the server answers `GET <path>` with the body `<path>\n`
//! and any request with a body with `received <n> bytes\n` (Content-Length or chunked),
//! keep-alive; the client sends requests on one connection and reads whole responses.
//!
//! For streams that must arrive whole and in order: `GET /lines/<n>` answers with
//! [`numbered_lines`]`(n)`, written in 64 KiB pieces, and a request with a body to
//! `/slow/<ms>` is read only after `<ms>` milliseconds, then answered with
//! `received <n> bytes, numbered lines: <true|false>\n`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::traffic::in_netns;

/// An HTTP server on `addr` inside a namespace, a thread per connection; stopped on drop.
#[derive(Debug)]
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
}

impl HttpServer {
    pub fn start(netns: &str, addr: SocketAddr) -> HttpServer {
        let listener = in_netns(netns, move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind http {addr}: {e}"))
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let accept = {
            let (stop, requests) = (Arc::clone(&stop), Arc::clone(&requests));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let requests = Arc::clone(&requests);
                            std::thread::spawn(move || serve(conn, &requests));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        HttpServer {
            stop,
            accept: Some(accept),
            requests,
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection until the peer closes it or sends garbage.
fn serve(conn: TcpStream, requests: &AtomicU64) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Ok(Some(head)) = read_head(&mut reader) {
        let mut parts = head.start.split(' ');
        let (Some(_method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let body = match read_body(&mut reader, &head) {
            Ok(b) => b,
            Err(_) => return,
        };
        requests.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = path.strip_prefix("/lines/").and_then(|n| n.parse().ok()) {
            if send_lines(&mut out, n).is_err() {
                return;
            }
            continue;
        }
        let reply = if body.is_empty() && head.length.is_none() && !head.chunked {
            format!("{path}\n")
        } else if path.starts_with("/slow/") {
            format!(
                "received {} bytes, numbered lines: {}\n",
                body.len(),
                body == numbered_lines(body.len())
            )
        } else {
            format!("received {} bytes\n", body.len())
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// `n` bytes of 16-byte lines numbered from 0 (`000000000000000\n`, `000000000000001\n`,
/// …), the last one cut short: a stream whose every byte says where it belongs.
pub fn numbered_lines(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 16);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(format!("{i:015}\n").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

/// A 200 with [`numbered_lines`]`(n)` as its body, in 64 KiB writes.
fn send_lines(out: &mut TcpStream, n: usize) -> io::Result<()> {
    let head =
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {n}\r\n\r\n");
    out.write_all(head.as_bytes())?;
    for piece in numbered_lines(n).chunks(64 << 10) {
        out.write_all(piece)?;
    }
    Ok(())
}

/// A request or response head: its first line and the headers that frame the body.
#[derive(Debug, Default)]
struct Head {
    start: String,
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// The next head, `None` at a clean end of stream.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut head = Head::default();
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    head.start = line.trim_end().to_string();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok(Some(head));
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad header"));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => head.length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
}

/// The body a head announces (Content-Length or chunked; none otherwise).
fn read_body(reader: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if n == 0 {
                let mut end = String::new();
                reader.read_line(&mut end)?;
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + n, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    }
    if let Some(n) = head.length {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(body)
}

/// A response as the client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// One client connection (keep-alive) from inside a namespace.
#[derive(Debug)]
pub struct HttpClient {
    out: TcpStream,
    reader: BufReader<TcpStream>,
    host: String,
}

impl HttpClient {
    pub fn connect(netns: &str, to: SocketAddr, host: &str) -> io::Result<HttpClient> {
        let stream = in_netns(netns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_nodelay(true)?;
        Ok(HttpClient {
            out: stream.try_clone()?,
            reader: BufReader::new(stream),
            host: host.to_string(),
        })
    }

    /// Sends raw bytes (pipelined requests, garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Sends a request with `headers` and `body` (Content-Length when given).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<()> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        self.out.write_all(head.as_bytes())?;
        if let Some(body) = body {
            self.out.write_all(body)?;
        }
        Ok(())
    }

    /// Reads the next response.
    pub fn read(&mut self) -> io::Result<Response> {
        let head = read_head(&mut self.reader)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let status = head
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, head.start.clone()))?;
        let body = if head.length.is_none() && !head.chunked {
            // Delimited by the end of the connection.
            let mut rest = Vec::new();
            self.reader.read_to_end(&mut rest)?;
            rest
        } else {
            read_body(&mut self.reader, &head)?
        };
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            close: head.close,
        })
    }

    /// Sends a request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        self.send(method, path, headers, body)?;
        self.read()
    }

    /// Whether the server closed the connection (reads end of stream within 2 s).
    pub fn closed_by_peer(&mut self) -> bool {
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(2)));
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// One request on a fresh connection; `None` when no connection or no response.
pub fn get(netns: &str, to: SocketAddr, path: &str) -> Option<Response> {
    let mut client = HttpClient::connect(netns, to, &to.ip().to_string()).ok()?;
    client.request("GET", path, &[], None).ok()
}
