//! The agent's side of the L7 proxy (`crate::proxy`): a listener for every destination port
//! that some endpoint's policy gives HTTP rules (its port goes into the policy map entries,
//! where the datapath finds it), the policy routing that delivers steered packets locally,
//! the answers to the proxy's questions (who is the client, which rules apply now) from the
//! agent's endpoints, identities and resolved policy, and the proxy's access records on
//! `cilium monitor --type l7`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cilium_api::models::{HttpRuleModel, MonitorEvent, Status, StatusState};

use super::{lock, Agent, Inner};
use crate::datapath::abi;
use crate::datapath::monitor::KIND_L7;
use crate::policy::rule::HttpRule;
use crate::policy::{DirectionTable, Verdict};
use crate::proxy::{AccessLog, AccessRecord, Connection, Proxy, ProxyPolicy};

/// TCP, the only protocol the proxy speaks.
const TCP: u8 = 6;
/// Access records waiting for slow monitor readers.
const ACCESS_QUEUE: usize = 1024;

/// The proxy and what it needs from the agent.
pub(super) struct AgentProxy {
    /// Dropped first: closes the listeners and ends the connections' tasks.
    proxy: Proxy,
    policy: Arc<ProxyRules>,
    /// Where the monitor gets the access records, once the agent runs.
    monitor: Arc<OnceLock<Arc<crate::datapath::Datapath>>>,
    /// Why nothing reaches the proxy: its policy routing could not be set up (at start).
    routing: Option<String>,
    /// The last listener that could not be opened, until one opens again.
    listener_error: Mutex<Option<String>>,
    /// Kept for its drop, after the proxy's: stops the proxy's thread.
    _runtime: ProxyRuntime,
}

/// The proxy's own single-threaded runtime on a thread of its own. One thread serves every
/// proxied connection without handing work between threads: on a small node that costs
/// less than the wake-ups of a shared multi-threaded runtime, and the API stays responsive
/// under proxy load.
struct ProxyRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyRuntime {
    fn start() -> Result<ProxyRuntime, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the proxy's runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("l7-proxy".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| format!("cannot start the proxy's thread: {e}"))?;
        Ok(ProxyRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for AgentProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProxy").finish_non_exhaustive()
    }
}

/// HTTP rules as the policy resolves them, and compiled.
type RuleModels = Arc<BTreeSet<HttpRuleModel>>;
type CompiledRules = Arc<Vec<HttpRule>>;

/// Answers the proxy from the agent's state, once the agent is running.
#[derive(Default)]
struct ProxyRules {
    agent: OnceLock<Weak<Agent>>,
    /// Compiled rule sets, by their rules.
    compiled: Mutex<HashMap<RuleModels, CompiledRules>>,
}

impl AgentProxy {
    /// Sets up the policy routing and the proxy on a runtime of its own.
    pub(super) fn start(config: &crate::config::AgentConfig) -> Result<AgentProxy, String> {
        let runtime = ProxyRuntime::start()?;
        let (live, _) = tokio::sync::broadcast::channel(ACCESS_QUEUE);
        let monitor: Arc<OnceLock<Arc<crate::datapath::Datapath>>> = Arc::default();
        let sink = Arc::clone(&monitor);
        let log = AccessLog::new(config.access_log.as_deref(), live)
            .map_err(|e| e.to_string())?
            .with_hook(Arc::new(move |record| {
                if let Some(dp) = sink.get() {
                    publish_record(dp, record);
                }
            }));
        let policy = Arc::new(ProxyRules::default());
        let proxy = Proxy::new(
            runtime.handle.clone(),
            Arc::clone(&policy) as Arc<dyn ProxyPolicy>,
            log,
        );
        let routing = crate::link::proxy_route::ensure_proxy_routing()
            .err()
            .map(|e| format!("no policy routing for the proxy: {e}"));
        if let Some(reason) = &routing {
            tracing::warn!("{reason}: connections under HTTP rules are dropped");
        }
        Ok(AgentProxy {
            proxy,
            policy,
            monitor,
            routing,
            listener_error: Mutex::new(None),
            _runtime: runtime,
        })
    }

    /// The proxy port of destination port `dport`; 0 when the proxy cannot take it, which
    /// the datapath answers with a drop (161).
    pub(super) fn port_for(&self, dport: u16) -> u16 {
        if self.routing.is_some() {
            // Without policy routing nothing reaches the listeners.
            return 0;
        }
        match self.proxy.add_port(dport) {
            Ok(port) => {
                *lock(&self.listener_error) = None;
                port
            }
            Err(e) => {
                tracing::warn!(dport, "no L7 proxy listener: {e}");
                *lock(&self.listener_error) = Some(e.to_string());
                0
            }
        }
    }

    /// Closes the listeners of destination ports no policy redirects any more.
    pub(super) fn retain_ports(&self, wanted: &BTreeSet<u16>) {
        for dport in self.proxy.ports().into_keys() {
            if !wanted.contains(&dport) {
                self.proxy.remove_port(dport);
            }
        }
    }

    /// `Proxy:` of `cilium status`.
    pub(super) fn status(&self) -> Status {
        let ports = self.proxy.ports();
        let stats = self.proxy.stats();
        let failure = self
            .routing
            .clone()
            .or_else(|| lock(&self.listener_error).clone());
        match failure {
            Some(reason) => Status::new(StatusState::Failure, reason),
            None => Status::new(
                StatusState::Ok,
                format!(
                    "{} ports redirected; requests: {} forwarded, {} denied, {} failed",
                    ports.len(),
                    stats.forwarded,
                    stats.denied,
                    stats.error
                ),
            ),
        }
    }
}

/// An access record on `cilium monitor --type l7`, when somebody is watching.
fn publish_record(dp: &crate::datapath::Datapath, record: &AccessRecord) {
    if !dp.has_monitor_readers() {
        return;
    }
    dp.publish(Arc::new(MonitorEvent {
        kind: KIND_L7.to_string(),
        message: record.summary(),
        src_identity: record.source.identity,
        dst_identity: record.destination.identity,
        l7: serde_json::to_value(record).ok(),
        ..Default::default()
    }));
}

/// Destination ports a resolved direction sends through the proxy.
pub(super) fn redirected_ports(table: &DirectionTable, out: &mut BTreeSet<u16>) {
    if !table.enforcing {
        return;
    }
    for (k, verdict) in &table.entries {
        if matches!(verdict, Verdict::Redirect(_))
            && k.port != 0
            && (k.proto == TCP || k.proto == 0)
        {
            out.insert(k.port);
        }
    }
}

impl Agent {
    /// Lets the proxy answer from this agent's state, and sends its access records to the
    /// monitor.
    pub(super) fn start_proxy(self: &Arc<Self>) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        let _ = proxy.policy.agent.set(Arc::downgrade(self));
        if let Some(dp) = &self.datapath {
            let _ = proxy.monitor.set(Arc::clone(dp));
        }
    }

    /// The proxy port for `dport`; 0 without a proxy.
    pub(super) fn proxy_port(&self, dport: u16) -> u16 {
        self.proxy.as_ref().map_or(0, |p| p.port_for(dport))
    }

    /// After the policy maps changed: closes the listeners nobody redirects to.
    pub(super) fn prune_proxy_ports(&self, inner: &Inner) {
        let Some(proxy) = &self.proxy else {
            return;
        };
        let mut wanted = BTreeSet::new();
        for record in inner.endpoints.iter() {
            if !record.options.get("Policy") {
                continue;
            }
            let Some(id) = record.identity.as_ref().map(|i| i.id) else {
                continue;
            };
            if let Some(p) = inner.policy.policy(id) {
                redirected_ports(&p.ingress, &mut wanted);
                redirected_ports(&p.egress, &mut wanted);
            }
        }
        proxy.retain_ports(&wanted);
    }

    /// `Proxy:` of `cilium status`.
    pub(super) fn proxy_status(&self) -> Status {
        let Some(p) = &self.proxy else {
            return Status::new(StatusState::Disabled, "no L7 proxy (no datapath)");
        };
        let mut status = p.status();
        if status.state == StatusState::Ok {
            if let Some(dp) = &self.datapath {
                match dp.proxy_sockets() {
                    Ok(n) => status
                        .msg
                        .push_str(&format!("; {n} sockets skip the stack")),
                    Err(e) => status
                        .msg
                        .push_str(&format!("; through the stack only ({e})")),
                }
            }
        }
        status
    }

    /// The identity of an address as the datapath sees it: a local endpoint's, another
    /// node's endpoint's, the node's own (`host`), a CIDR identity's (longest prefix), else
    /// `world`.
    fn identity_of(&self, inner: &Inner, ip: IpAddr) -> u32 {
        if let Some(r) = inner
            .endpoints
            .iter()
            .find(|r| r.addresses().any(|a| a == ip))
        {
            return r.identity.as_ref().map_or(0, |i| i.id);
        }
        if let Some(v) = lock(&self.cluster.remote).get(&ip) {
            return v.identity;
        }
        if self
            .datapath
            .as_ref()
            .is_some_and(|dp| dp.host_addresses().contains(&ip))
        {
            return abi::IDENTITY_HOST;
        }
        inner
            .cidr_identities
            .iter()
            .filter(|(c, _)| c.contains(&ip))
            .max_by_key(|(c, _)| c.prefix_len())
            .map_or(abi::IDENTITY_WORLD, |(_, id)| *id)
    }
}

impl ProxyRules {
    fn agent(&self) -> Option<Arc<Agent>> {
        self.agent.get().and_then(Weak::upgrade)
    }

    fn compile(&self, models: &RuleModels) -> CompiledRules {
        let mut cache = lock(&self.compiled);
        if let Some(rules) = cache.get(models) {
            return Arc::clone(rules);
        }
        // The rules were validated on import: one that does not compile now matches nothing.
        let rules: Vec<HttpRule> = models
            .iter()
            .filter_map(|m| match HttpRule::from_model(m) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("HTTP rule {m:?} does not compile: {e}");
                    None
                }
            })
            .collect();
        let rules = Arc::new(rules);
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(Arc::clone(models), Arc::clone(&rules));
        rules
    }

    /// The verdict of one endpoint's direction for the remote identity on `port`; `None`
    /// when it denies. Not enforcing: allowed.
    fn verdict(table: &DirectionTable, remote: u32, port: u16) -> Option<Verdict> {
        if !table.enforcing {
            return Some(Verdict::Allow);
        }
        table.lookup(remote, port, TCP)
    }
}

impl ProxyPolicy for ProxyRules {
    fn connection(&self, client: SocketAddr, local: SocketAddr) -> Result<Connection, String> {
        let agent = self.agent().ok_or("the agent is not running")?;
        let inner = lock(&agent.inner);
        let source_identity = agent.identity_of(&inner, client.ip());
        let destination_identity = agent.identity_of(&inner, local.ip());
        let source_labels = inner
            .policy
            .identity_labels(source_identity)
            .map(|l| l.to_strings())
            .unwrap_or_default();
        Ok(Connection {
            source_identity,
            source_labels,
            destination_identity,
            upstream: local,
            upstream_mark: abi::proxy_mark(source_identity),
        })
    }

    fn rules(&self, client: SocketAddr, local: SocketAddr) -> Option<Vec<Arc<Vec<HttpRule>>>> {
        let agent = self.agent()?;
        let inner = lock(&agent.inner);
        let source = agent.identity_of(&inner, client.ip());
        let destination = agent.identity_of(&inner, local.ip());
        let port = local.port();
        let mut sets = Vec::new();
        // The client's egress rules and the destination's ingress rules, where they are
        // local endpoints with enforcement on.
        let sides = [
            (client.ip(), destination, true),
            (local.ip(), source, false),
        ];
        for (ip, remote, egress) in sides {
            let Some(record) = inner
                .endpoints
                .iter()
                .find(|r| r.addresses().any(|a| a == ip))
            else {
                continue;
            };
            if !record.options.get("Policy") {
                continue;
            }
            let Some(policy) = record
                .identity
                .as_ref()
                .and_then(|i| inner.policy.policy(i.id))
            else {
                continue;
            };
            let table = if egress {
                &policy.egress
            } else {
                &policy.ingress
            };
            match Self::verdict(table, remote, port)? {
                Verdict::Allow => {}
                Verdict::Redirect(models) => sets.push(self.compile(&models)),
            }
        }
        Some(sets)
    }

    fn reply_mark(&self) -> u32 {
        abi::proxy_mark(0)
    }
}
