//! The eBPF datapath: the programs compiled at build time from `bpf-programs/`, their maps
//! pinned under `<bpf-root>/tc/globals`, attachment to endpoint devices, the map contents the
//! agent derives from its state, and the monitor events the programs report.

pub mod abi;
mod batch;
pub mod lb;
pub mod loader;
pub mod maps;
pub mod monitor;
pub mod sock;
pub mod sockmap;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use aya::Ebpf;
use cilium_api::models::MonitorEvent;
use tokio::sync::broadcast;

pub use maps::{EndpointEntry, Maps, PolicyVerdict, Prefix};

/// Errors of the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the eBPF datapath is not running: {0}")]
    Disabled(String),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("cannot attach {program} to {device}: {reason}")]
    Attach {
        program: &'static str,
        device: String,
        reason: String,
    },
    #[error("BPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("bpf filesystem at {path}: {reason}")]
    Bpffs { path: String, reason: String },
}

/// The loaded datapath of this agent.
pub struct Datapath {
    root: PathBuf,
    globals: PathBuf,
    programs: Mutex<Ebpf>,
    maps: Mutex<Maps>,
    lb: Mutex<lb::LbMaps>,
    /// Why the node's own processes do not get services, if they do not.
    socket_lb: Result<PathBuf, String>,
    /// The proxy's connections without the stack, or why not.
    proxy_sockets: Result<sockmap::ProxySockets, String>,
    /// The node's own addresses (the `host` identity), re-read by the agent's upkeep.
    host_addresses: Mutex<Vec<std::net::IpAddr>>,
    events: broadcast::Sender<Arc<MonitorEvent>>,
    events_lost: Arc<AtomicU64>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Events buffered for slow monitor readers before they lose some.
const MONITOR_QUEUE: usize = 4096;

impl Datapath {
    /// Mounts the BPF filesystem at `root` if needed, loads the programs with their maps
    /// (reusing pinned ones) and starts reading events; with `proxy_sockmap`, the proxy's
    /// connections with local endpoints skip the TCP/IP stack (`--proxy-sockmap`).
    pub fn open(root: &Path, proxy_sockmap: bool) -> Result<Datapath, DatapathError> {
        loader::ensure_bpffs(root)?;
        let globals = root.join("tc/globals");
        let legacy = loader::remove_legacy_links(root);
        if legacy > 0 {
            tracing::info!(links = legacy, "removed TCX link pins of an earlier build");
        }
        let mut ebpf = loader::load(&globals)?;
        let maps = Maps::open(&mut ebpf)?;
        let lb = lb::LbMaps::open(&mut ebpf)?;
        let socket_lb = sock::attach(&mut ebpf, root);
        match &socket_lb {
            Ok(cgroup) => tracing::info!(
                cgroup = %cgroup.display(),
                "services translated for the node's processes (cgroup socket programs)"
            ),
            Err(e) => tracing::warn!("services are not translated for the node's processes: {e}"),
        }
        let proxy_sockets = if proxy_sockmap {
            sockmap::attach(&mut ebpf)
        } else {
            Err("--proxy-sockmap is off".to_string())
        };
        match &proxy_sockets {
            Ok(_) => tracing::info!("the L7 proxy's local connections skip the TCP/IP stack"),
            Err(e) if proxy_sockmap => {
                tracing::warn!("the L7 proxy's connections go through the TCP/IP stack: {e}")
            }
            Err(_) => {}
        }
        let ring =
            RingBuf::try_from(loader::take_map(&mut ebpf, "cilium_events")?).map_err(|e| {
                DatapathError::Map {
                    map: "cilium_events",
                    reason: e.to_string(),
                }
            })?;
        let (events, _) = broadcast::channel(MONITOR_QUEUE);
        let events_lost = Arc::new(AtomicU64::new(0));
        spawn_event_reader(ring, events.clone())?;
        Ok(Datapath {
            root: root.to_path_buf(),
            globals,
            programs: Mutex::new(ebpf),
            maps: Mutex::new(maps),
            lb: Mutex::new(lb),
            socket_lb,
            proxy_sockets,
            host_addresses: Mutex::new(Vec::new()),
            events,
            events_lost,
        })
    }

    /// `<bpf-root>/tc/globals`.
    pub fn pin_path(&self) -> &Path {
        &self.globals
    }

    pub fn maps(&self) -> MutexGuard<'_, Maps> {
        lock(&self.maps)
    }

    /// Why the node's own processes do not get services (`None`: they do).
    pub fn socket_lb_error(&self) -> Option<&str> {
        self.socket_lb.as_ref().err().map(String::as_str)
    }

    /// How many sockets of proxied connections skip the stack now; Err: why none can.
    pub fn proxy_sockets(&self) -> Result<usize, &str> {
        match &self.proxy_sockets {
            Ok(sockets) => Ok(sockets.count()),
            Err(e) => Err(e),
        }
    }

    /// The load-balancing maps.
    pub fn lb(&self) -> MutexGuard<'_, lb::LbMaps> {
        lock(&self.lb)
    }

    /// Attaches the programs to an endpoint's host-side device (or swaps them in place).
    pub fn attach(&self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        loader::attach(&mut lock(&self.programs), ifname, ifindex)
    }

    /// The node's addresses as last read.
    pub fn host_addresses(&self) -> Vec<std::net::IpAddr> {
        lock(&self.host_addresses).clone()
    }

    pub fn set_host_addresses(&self, addresses: Vec<std::net::IpAddr>) {
        *lock(&self.host_addresses) = addresses;
    }

    /// Takes the programs off a device.
    /// Runs `from_overlay` on the overlay device.
    pub fn attach_overlay(&self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        loader::attach_overlay(&mut lock(&self.programs), ifname, ifindex)
    }

    pub fn detach(&self, ifname: &str, ifindex: u32) {
        loader::detach(ifname, ifindex)
    }

    /// The programs on a device's hooks: `(hook, program name)`.
    pub fn attached(&self, ifname: &str, ifindex: u32) -> Vec<(crate::link::tc::Hook, String)> {
        loader::attached(ifname, ifindex)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MonitorEvent>> {
        self.events.subscribe()
    }

    /// Whether anybody follows the monitor (`cilium monitor`).
    pub fn has_monitor_readers(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Hands an event that does not come from the programs (the L7 proxy's requests) to the
    /// monitor readers.
    pub fn publish(&self, event: Arc<MonitorEvent>) {
        let _ = self.events.send(event);
    }

    /// Records events a monitor reader missed.
    pub fn note_lost(&self, n: u64) {
        self.events_lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn events_lost(&self) -> u64 {
        self.events_lost.load(Ordering::Relaxed)
    }

    /// Removes expired conntrack entries; returns how many.
    pub fn gc_conntrack(&self) -> usize {
        let now = monotonic_ns();
        let mut maps = self.maps();
        gc_map(&mut maps.ct4, now) + gc_map(&mut maps.ct6, now)
    }

    /// Every conntrack entry, v4 then v6, as (key, entry) pairs in a common form.
    pub fn conntrack(&self) -> Vec<CtRecord> {
        let maps = self.maps();
        let mut out = Vec::new();
        for (k, v) in maps.ct4.iter().filter_map(Result::ok) {
            out.push(CtRecord {
                saddr: std::net::IpAddr::from(k.saddr),
                daddr: std::net::IpAddr::from(k.daddr),
                sport: u16::from_be(k.sport),
                dport: u16::from_be(k.dport),
                proto: k.proto,
                dir: k.dir,
                entry: v,
            });
        }
        for (k, v) in maps.ct6.iter().filter_map(Result::ok) {
            out.push(CtRecord {
                saddr: std::net::IpAddr::from(k.saddr),
                daddr: std::net::IpAddr::from(k.daddr),
                sport: u16::from_be(k.sport),
                dport: u16::from_be(k.dport),
                proto: k.proto,
                dir: k.dir,
                entry: v,
            });
        }
        out
    }
}

/// Removes the entries of one conntrack map that expired before `now`.
fn gc_map<K: aya::Pod>(map: &mut aya::maps::HashMap<MapData, K, abi::CtEntry>, now: u64) -> usize {
    let expired: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.expires < now)
        .map(|(k, _)| k)
        .collect();
    expired.iter().filter(|k| map.remove(k).is_ok()).count()
}

/// A conntrack entry with its tuple decoded (ports in host order).
#[derive(Debug, Clone)]
pub struct CtRecord {
    pub saddr: std::net::IpAddr,
    pub daddr: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub entry: abi::CtEntry,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Reads the ring buffer on its own thread and publishes decoded events.
fn spawn_event_reader(
    mut ring: RingBuf<MapData>,
    events: broadcast::Sender<Arc<MonitorEvent>>,
) -> Result<(), DatapathError> {
    use std::os::fd::AsRawFd;
    std::thread::Builder::new()
        .name("bpf-events".into())
        .spawn(move || loop {
            let mut pfd = libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, 1000) };
            if rc < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            while let Some(item) = ring.next() {
                // Nobody listening is fine: events are only for monitors.
                if events.receiver_count() == 0 {
                    continue;
                }
                if let Some(ev) = abi::Event::from_bytes(&item) {
                    let _ = events.send(Arc::new(monitor::decode(&ev)));
                }
            }
        })
        .map(|_| ())
        .map_err(|e| DatapathError::Load(format!("cannot start the event reader: {e}")))
}

/// Desired ipcache contents from the node's addresses, local endpoints, CIDR identities and
/// other nodes' endpoints. Later sources win on equal prefixes: CIDR identities, then other
/// nodes' endpoints, then host, then local endpoints.
pub fn ipcache_desired(
    cidrs: &BTreeMap<crate::cidr::Cidr, u32>,
    host: &[std::net::IpAddr],
    endpoints: &[(std::net::IpAddr, u32)],
    remote: &BTreeMap<std::net::IpAddr, abi::IpcacheValue>,
) -> BTreeMap<Prefix, abi::IpcacheValue> {
    let mut out = BTreeMap::new();
    for (c, id) in cidrs {
        out.insert(Prefix::from_cidr(c), abi::IpcacheValue::local(*id));
    }
    for (ip, value) in remote {
        if value.identity != 0 {
            out.insert(Prefix::host(*ip), *value);
        }
    }
    for ip in host {
        out.insert(
            Prefix::host(*ip),
            abi::IpcacheValue::local(abi::IDENTITY_HOST),
        );
    }
    for (ip, id) in endpoints {
        if *id != 0 {
            out.insert(Prefix::host(*ip), abi::IpcacheValue::local(*id));
        }
    }
    out
}
