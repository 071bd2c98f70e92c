//! The L7 HTTP proxy (seed §5.1 `rules.http`): the agent-side listeners that the datapath
//! diverts TCP connections to when a policy says that HTTP rules apply, and the HTTP/1.1
//! handling of those connections.
//!
//! The datapath steers a connection with `bpf_sk_assign` and policy routing, as TPROXY
//! does: the accepted socket's local address is the connection's original destination
//! (`10.0.0.5:80`) and its peer is the real client. For each destination port the proxy has
//! one listener ([`Proxy::add_port`]): two transparent sockets, on `127.0.0.1:P` and
//! `[::1]:P`, with `P` taken from [`PROXY_PORTS`].
//!
//! Every accepted connection asks the [`ProxyPolicy`] who the client is and where to connect
//! upstream ([`ProxyPolicy::connection`]); every request on it is matched against the rule
//! sets the policy gives at that moment ([`ProxyPolicy::rules`]), so rule changes apply from
//! the next request on. Denied requests get `403 Access denied`; allowed ones go to the
//! upstream over one HTTP/1.1 connection per client connection, bodies streamed both ways.
//! Each request leaves an [`AccessRecord`] in the [`AccessLog`] (`http.rs` has the matching
//! and forwarding details).

mod http;
mod listener;
mod log;
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::http::HEADER_READ_TIMEOUT;
pub use self::log::{AccessLog, AccessRecord, Destination, RecordHook, Source, Verdict};
use crate::policy::rule::HttpRule;

/// The ports proxy listeners are allocated from (the first free one is taken).
pub const PROXY_PORTS: RangeInclusive<u16> = 10000..=20000;

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A socket call on a listener failed.
    #[error("proxy listener {addr}: cannot {op}: {source}")]
    Socket {
        op: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// A socket option that needs privileges was refused.
    #[error(
        "proxy listener {addr}: cannot set {option}: {source} (it needs CAP_NET_ADMIN: \
         run the agent as root)"
    )]
    Privilege {
        option: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Every port of the proxy's range is taken.
    #[error("no free proxy port in {first}-{last} for destination port {dport}")]
    NoFreePort { dport: u16, first: u16, last: u16 },
    /// The access log file cannot be opened.
    #[error("access log {path}: cannot {op}: {source}")]
    AccessLog {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// [`Proxy::shutdown`] was called.
    #[error("the proxy is shut down")]
    Shutdown,
}

impl ProxyError {
    /// Whether the port is taken (the next one is tried): `bind` says so, or `listen` when
    /// another socket bound the port with `SO_REUSEADDR` and listened first.
    fn is_addr_in_use(&self) -> bool {
        matches!(self, ProxyError::Socket { op: "bind" | "listen", source, .. }
            if source.kind() == io::ErrorKind::AddrInUse)
    }
}

/// Who a proxied connection comes from and where it goes, as the policy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Security identity of the client.
    pub source_identity: u32,
    /// Labels of that identity, for the access log.
    pub source_labels: Vec<String>,
    /// Security identity of the destination.
    pub destination_identity: u32,
    /// Where allowed requests are forwarded to; the original destination in production.
    pub upstream: SocketAddr,
    /// `SO_MARK` of the upstream connection (set before connecting), so that the datapath
    /// knows it comes from the proxy on behalf of `source_identity`.
    pub upstream_mark: u32,
}

/// What the proxy asks of the policy engine. Called from tokio worker threads: answer
/// quickly, without blocking on I/O.
pub trait ProxyPolicy: Send + Sync {
    /// Called once per accepted connection, with the client's address and the connection's
    /// local address (its original destination). `Err(reason)` refuses the connection: it is
    /// closed and the refusal logged.
    fn connection(&self, client: SocketAddr, local: SocketAddr) -> Result<Connection, String>;

    /// Called for every request: the rule sets that must all allow it (a request passes a set
    /// when any rule of the set matches it, so an empty set passes nothing). An empty list
    /// means the traffic is allowed at L4 only: every request is forwarded. `None` means the
    /// connection is not allowed at all any more: every request gets 403.
    fn rules(&self, client: SocketAddr, local: SocketAddr) -> Option<Vec<Arc<Vec<HttpRule>>>>;

    /// `SO_MARK` of the listening sockets (accepted sockets inherit it), which the routing
    /// rules use to send the proxy's replies back through the datapath.
    fn reply_mark(&self) -> u32;
}

/// Requests per verdict, and connections refused, since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests forwarded upstream.
    pub forwarded: u64,
    /// Requests denied by policy (403).
    pub denied: u64,
    /// Requests that failed (400, 502, 503).
    pub error: u64,
    /// Connections the policy refused ([`ProxyPolicy::connection`] returned an error).
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    denied: AtomicU64,
    error: AtomicU64,
    refused: AtomicU64,
}

/// What connection tasks share: the policy, the log, the counters, the shutdown signal.
struct Context {
    policy: Arc<dyn ProxyPolicy>,
    log: AccessLog,
    counters: Counters,
    shutdown: watch::Receiver<bool>,
    /// [`http::HEADER_READ_TIMEOUT`], shorter in tests.
    header_read_timeout: Duration,
}

impl Context {
    /// Counts a record and sends it to the log.
    fn record(&self, record: AccessRecord) {
        let counter = match record.verdict {
            Verdict::Forwarded => &self.counters.forwarded,
            Verdict::Denied => &self.counters.denied,
            Verdict::Error => &self.counters.error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.log.write(record);
    }
}

/// The listener of one destination port.
struct PortListener {
    proxy_port: u16,
    sockets: Vec<Arc<TcpListener>>,
    tasks: Vec<JoinHandle<()>>,
}

impl PortListener {
    /// Stops accepting at once (new connections are refused from here on) and ends the
    /// accept tasks, which close the sockets. Accepted connections are not affected.
    fn close(self) {
        for socket in &self.sockets {
            listener::stop_listening(socket);
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The L7 proxy: listeners per destination port and the connections they accept.
/// Dropping it is [`Proxy::shutdown`].
pub struct Proxy {
    handle: Handle,
    range: RangeInclusive<u16>,
    context: Arc<Context>,
    shutdown: watch::Sender<bool>,
    ports: Mutex<BTreeMap<u16, PortListener>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("ports", &self.ports())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy without listeners; its tasks run on `handle`.
    pub fn new(handle: Handle, policy: Arc<dyn ProxyPolicy>, log: AccessLog) -> Proxy {
        let (shutdown, receiver) = watch::channel(false);
        Proxy {
            handle,
            range: PROXY_PORTS,
            context: Arc::new(Context {
                policy,
                log,
                counters: Counters::default(),
                shutdown: receiver,
                header_read_timeout: self::http::HEADER_READ_TIMEOUT,
            }),
            shutdown,
            ports: Mutex::new(BTreeMap::new()),
        }
    }

    /// Takes proxy ports from `range` instead of [`PROXY_PORTS`] (for hosts where those are
    /// in use, and for tests that must not share ports).
    pub fn with_port_range(mut self, range: RangeInclusive<u16>) -> Proxy {
        self.range = range;
        self
    }

    /// A shorter header read timeout, set before any listener exists.
    #[cfg(test)]
    fn with_header_read_timeout(mut self, timeout: Duration) -> Proxy {
        if let Some(context) = Arc::get_mut(&mut self.context) {
            context.header_read_timeout = timeout;
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, PortListener>> {
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes sure a listener exists for destination port `dport` and returns its proxy port.
    /// Idempotent: while the listener exists, every call returns the same port (no reference
    /// count: one [`Proxy::remove_port`] closes it). A new listener takes the first port of
    /// the range ([`PROXY_PORTS`] by default) that binds on both loopback addresses.
    pub fn add_port(&self, dport: u16) -> Result<u16, ProxyError> {
        let mut ports = self.lock();
        if *self.shutdown.borrow() {
            return Err(ProxyError::Shutdown);
        }
        if let Some(existing) = ports.get(&dport) {
            return Ok(existing.proxy_port);
        }
        let mark = self.context.policy.reply_mark();
        let taken: BTreeSet<u16> = ports.values().map(|l| l.proxy_port).collect();
        for port in self.range.clone().filter(|p| !taken.contains(p)) {
            let sockets = match bind_pair(port, mark) {
                Ok(sockets) => sockets,
                Err(e) if e.is_addr_in_use() => continue,
                Err(e) => return Err(e),
            };
            let listener = self.start(port, sockets)?;
            tracing::info!(dport, proxy_port = port, "proxy: listening");
            ports.insert(dport, listener);
            return Ok(port);
        }
        Err(ProxyError::NoFreePort {
            dport,
            first: *self.range.start(),
            last: *self.range.end(),
        })
    }

    /// Registers the sockets with the runtime and starts accepting on them.
    fn start(
        &self,
        port: u16,
        sockets: Vec<std::net::TcpListener>,
    ) -> Result<PortListener, ProxyError> {
        let _runtime = self.handle.enter();
        let mut listener = PortListener {
            proxy_port: port,
            sockets: Vec::new(),
            tasks: Vec::new(),
        };
        for socket in sockets {
            let addr = socket
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            let socket = match TcpListener::from_std(socket) {
                Ok(socket) => Arc::new(socket),
                Err(source) => {
                    listener.close();
                    return Err(ProxyError::Socket {
                        op: "register with the runtime",
                        addr,
                        source,
                    });
                }
            };
            let task = self.handle.spawn(accept_loop(
                Arc::clone(&socket),
                Arc::clone(&self.context),
                self.handle.clone(),
            ));
            listener.sockets.push(socket);
            listener.tasks.push(task);
        }
        Ok(listener)
    }

    /// Closes the listener of destination port `dport`: new connections are refused once this
    /// returns; connections already accepted run on to their end. Unknown ports are ignored.
    pub fn remove_port(&self, dport: u16) {
        let removed = self.lock().remove(&dport);
        if let Some(listener) = removed {
            tracing::info!(
                dport,
                proxy_port = listener.proxy_port,
                "proxy: listener closed"
            );
            listener.close();
        }
    }

    /// The listeners: destination port → proxy port.
    pub fn ports(&self) -> BTreeMap<u16, u16> {
        self.lock()
            .iter()
            .map(|(dport, l)| (*dport, l.proxy_port))
            .collect()
    }

    /// Requests per verdict and refused connections so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.context.counters;
        ProxyStats {
            forwarded: c.forwarded.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            error: c.error.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
        }
    }

    /// Closes every listener and asks open connections to finish: each completes the request
    /// it is serving, then closes. Later [`Proxy::add_port`] calls fail.
    pub fn shutdown(&self) {
        let listeners = {
            let mut ports = self.lock();
            self.shutdown.send_replace(true);
            std::mem::take(&mut *ports)
        };
        for listener in listeners.into_values() {
            listener.close();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The two sockets of a listener on port `port`. When IPv6 is not available on the host
/// (no `::1`), the listener has the IPv4 socket only.
fn bind_pair(port: u16, mark: u32) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let v4 = listener::listen(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), mark)?;
    match listener::listen(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), mark) {
        Ok(v6) => Ok(vec![v4, v6]),
        Err(ProxyError::Socket { source, .. }) if listener::ipv6_unavailable(&source) => {
            tracing::warn!(port, error = %source, "proxy: IPv6 unavailable, listening on 127.0.0.1 only");
            Ok(vec![v4])
        }
        Err(e) => Err(e),
    }
}

/// Accepts connections until the task is aborted, each served by its own task.
async fn accept_loop(socket: Arc<TcpListener>, context: Arc<Context>, handle: Handle) {
    loop {
        match socket.accept().await {
            Ok((stream, client)) => {
                handle.spawn(self::http::serve(stream, client, Arc::clone(&context)));
            }
            Err(e) => {
                // EINVAL: the listener was stopped and this task is about to be aborted.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    tracing::warn!(error = %e, "proxy: accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod lifecycle_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
