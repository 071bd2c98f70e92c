//! Prometheus metrics (`--prometheus-serve-addr`): `GET /metrics` in the text exposition format
//! 0.0.4, written by hand (no client library), on a TCP listener that exists only when the flag
//! is given. `docs/metrics.md` lists every metric.
//!
//! Two kinds of figures:
//! - **read at scrape time** from the same sources as `cilium status` ([`Agent::status`]) and
//!   the agent's registry ([`Agent::metric_counts`]): endpoints by state, identities, policy
//!   revision and rules, the datapath's forward/drop counters, lost monitor events, kvstore and
//!   container runtime health, build information;
//! - **recorded on the hot path** of the API server: one [`Histogram`] per (method, path
//!   template, status code) of the agent API, and per CNI operation. Recording is a few relaxed
//!   atomic additions into series allocated once ([`OnceLock`]): no lock per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cilium_api::models::{DatapathStatus, EndpointState, StatusState};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::api_server::routes::{Route, ROUTES};
use crate::daemon::Agent;

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets, `+Inf` implied: 0.5 ms (a `GET /healthz`)
/// to 30 s (an endpoint create waiting on netlink and the kvstore).
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BUCKETS`] in nanoseconds, for the comparison on the hot path.
const BUCKET_NANOS: [u64; BUCKETS.len()] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A latency histogram with the fixed [`BUCKETS`]. Each observation adds to exactly one
/// (non-cumulative) bucket and to the sum; the exposition accumulates.
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket; the last one is `(30 s, +Inf)`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

/// A consistent-enough read of a [`Histogram`]: cumulative bucket counts (the last is
/// `+Inf`, equal to `count`) and the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: [u64; BUCKETS.len() + 1],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let index = BUCKET_NANOS.partition_point(|bound| *bound < nanos);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; BUCKETS.len() + 1];
        let mut total = 0u64;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            total = total.wrapping_add(bucket.load(Ordering::Relaxed));
            *slot = total;
        }
        HistogramSnapshot {
            cumulative,
            count: total,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Methods with their own label value; anything else is `other`.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Status codes the API answers (see `api_server::handlers::status_of`); anything else is
/// labelled `other`.
const CODES: [u16; 16] = [
    200, 201, 204, 206, 400, 404, 405, 409, 413, 460, 500, 501, 502, 503, 520, 521,
];

const ROUTE_SLOTS: usize = ROUTES.len() + 1;
const METHOD_SLOTS: usize = METHODS.len() + 1;
const CODE_SLOTS: usize = CODES.len() + 1;
const API_SLOTS: usize = ROUTE_SLOTS * METHOD_SLOTS * CODE_SLOTS;

/// The CNI operation an agent API request serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniOp {
    /// `PUT /v1/endpoint/container-id:<id>` (what `cilium-cni ADD` sends).
    Add,
    /// `DELETE /v1/endpoint/container-id:<id>` (what `cilium-cni DEL` sends).
    Del,
}

impl CniOp {
    /// The CNI operation of a request, if it is one: the endpoint create and delete of
    /// `cilium-cni` address the endpoint by `container-id:`. (GC deletes by `cilium-local:`
    /// and `cilium-docker` uses `docker-endpoint:`: neither is counted.)
    pub fn of(method: &Method, route: &Route) -> Option<CniOp> {
        match route {
            Route::Endpoint(id) if id.starts_with("container-id:") => match *method {
                Method::PUT => Some(CniOp::Add),
                Method::DELETE => Some(CniOp::Del),
                _ => None,
            },
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            CniOp::Add => "add",
            CniOp::Del => "del",
        }
    }
}

/// Latency of the agent API: one lazily allocated histogram per (path template, method,
/// code), and one per CNI operation.
#[derive(Debug)]
pub struct ApiMetrics {
    series: [OnceLock<Box<Histogram>>; API_SLOTS],
    cni_add: Histogram,
    cni_del: Histogram,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics::new()
    }
}

/// The histograms the agent's API server records into.
pub static API: ApiMetrics = ApiMetrics::new();

impl ApiMetrics {
    pub const fn new() -> ApiMetrics {
        ApiMetrics {
            series: [const { OnceLock::new() }; API_SLOTS],
            cni_add: Histogram::new(),
            cni_del: Histogram::new(),
        }
    }

    /// Records one request. `route` is the index into [`ROUTES`] (`None`: no such path).
    pub fn observe(
        &self,
        route: Option<usize>,
        method: &Method,
        code: u16,
        cni: Option<CniOp>,
        elapsed: Duration,
    ) {
        let r = route.filter(|i| *i < ROUTES.len()).unwrap_or(ROUTES.len());
        let m = METHODS
            .iter()
            .position(|x| x == method)
            .unwrap_or(METHODS.len());
        let c = CODES.iter().position(|x| *x == code).unwrap_or(CODES.len());
        self.series[(r * METHOD_SLOTS + m) * CODE_SLOTS + c]
            .get_or_init(Box::default)
            .observe(elapsed);
        match cni {
            Some(CniOp::Add) => self.cni_add.observe(elapsed),
            Some(CniOp::Del) => self.cni_del.observe(elapsed),
            None => {}
        }
    }

    /// Every series observed so far: (path template, method, code, histogram).
    fn series(&self) -> impl Iterator<Item = (String, &'static str, String, &Histogram)> + '_ {
        self.series.iter().enumerate().filter_map(|(i, slot)| {
            let histogram = slot.get()?;
            let (rm, c) = (i / CODE_SLOTS, i % CODE_SLOTS);
            let (r, m) = (rm / METHOD_SLOTS, rm % METHOD_SLOTS);
            let template = match ROUTES.get(r) {
                Some(spec) => format!("{}{}", cilium_api::API_BASE, spec.template),
                None => "unknown".to_string(),
            };
            let method = METHODS.get(m).map_or("other", Method::as_str);
            let code = CODES
                .get(c)
                .map_or_else(|| "other".to_string(), u16::to_string);
            Some((template, method, code, &**histogram))
        })
    }
}

/// Timing of one API request, started when the request head is in; see
/// `api_server::handlers::handle`.
#[derive(Debug)]
pub struct RequestTimer {
    started: Instant,
    route: Option<usize>,
    method: Method,
    cni: Option<CniOp>,
}

impl RequestTimer {
    pub fn start(method: &Method, route: Option<&Route>) -> RequestTimer {
        RequestTimer {
            started: Instant::now(),
            route: route.map(Route::index),
            method: method.clone(),
            cni: route.and_then(|r| CniOp::of(method, r)),
        }
    }

    /// Records the request with the status of its reply into [`API`].
    pub fn finish(self, code: u16) {
        API.observe(
            self.route,
            &self.method,
            code,
            self.cni,
            self.started.elapsed(),
        );
    }
}

/// The figures the agent's registry reports (read under its lock by
/// [`Agent::metric_counts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCounts {
    /// Endpoints per state, in the order of [`EndpointState::ALL`].
    pub endpoints: [u64; EndpointState::ALL.len()],
    pub identities: u64,
    pub policy_revision: u64,
    pub policy_rules: u64,
}

impl AgentCounts {
    pub fn count_endpoint(&mut self, state: EndpointState) {
        if let Some(i) = EndpointState::ALL.iter().position(|s| *s == state) {
            self.endpoints[i] += 1;
        }
    }
}

/// Everything one scrape shows besides the API histograms.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: String,
    pub counts: AgentCounts,
    pub kvstore_up: bool,
    pub container_runtime_up: bool,
    /// The datapath counters of `cilium status` (absent without a datapath).
    pub datapath: Option<DatapathStatus>,
}

impl Snapshot {
    /// Reads the agent: the status `cilium status` shows, and the registry's counts.
    pub fn gather(agent: &Agent) -> Snapshot {
        let status = agent.status();
        Snapshot {
            version: status.version,
            counts: agent.metric_counts(),
            kvstore_up: status.kvstore.state == StatusState::Ok,
            container_runtime_up: status.container_runtime.state == StatusState::Ok,
            datapath: status.datapath,
        }
    }
}

/// The text exposition in the making.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape_label(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_string()))
            .zip(h.cumulative)
        {
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &bound));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The whole exposition: `snapshot` and the histograms of `api`.
pub fn render(snapshot: &Snapshot, api: &ApiMetrics) -> String {
    let mut e = Exposition {
        out: String::with_capacity(8192),
    };

    e.family(
        "cilium_build_info",
        "gauge",
        "Build information of the agent; always 1.",
    );
    e.sample("cilium_build_info", &[("version", &snapshot.version)], 1);

    e.family(
        "cilium_endpoint_count",
        "gauge",
        "Endpoints managed by the agent, by state.",
    );
    for (state, n) in EndpointState::ALL.iter().zip(snapshot.counts.endpoints) {
        e.sample("cilium_endpoint_count", &[("state", state.as_str())], n);
    }

    e.family(
        "cilium_identity_count",
        "gauge",
        "Security identities known to the agent (reserved, local and cluster), as \
         `cilium identity list` shows them.",
    );
    e.sample("cilium_identity_count", &[], snapshot.counts.identities);

    e.family(
        "cilium_policy_revision",
        "gauge",
        "Revision of the policy repository.",
    );
    e.sample(
        "cilium_policy_revision",
        &[],
        snapshot.counts.policy_revision,
    );

    e.family(
        "cilium_policy_count",
        "gauge",
        "Policy rules in the repository.",
    );
    e.sample("cilium_policy_count", &[], snapshot.counts.policy_rules);

    // Forward (reason 0) and drop counters, summed over the datapath's per-CPU slots. Keyed
    // again here so a series is never written twice.
    // With a datapath, both forward directions are always shown (0 before any traffic).
    let mut forwarded: BTreeMap<&str, (u64, u64)> = match snapshot.datapath {
        Some(_) => [("egress", (0, 0)), ("ingress", (0, 0))].into(),
        None => BTreeMap::new(),
    };
    let mut dropped: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for c in snapshot.datapath.iter().flat_map(|d| &d.counters) {
        let slot = if c.reason == 0 {
            forwarded.entry(c.direction.as_str()).or_default()
        } else {
            dropped
                .entry((c.description.as_str(), c.direction.as_str()))
                .or_default()
        };
        slot.0 = slot.0.wrapping_add(c.packets);
        slot.1 = slot.1.wrapping_add(c.bytes);
    }
    e.family(
        "cilium_forward_count_total",
        "counter",
        "Packets the datapath forwarded, by direction (ingress: towards endpoints, egress: \
         from endpoints).",
    );
    for (dir, (packets, _)) in &forwarded {
        e.sample("cilium_forward_count_total", &[("direction", dir)], packets);
    }
    e.family(
        "cilium_forward_bytes_total",
        "counter",
        "Bytes the datapath forwarded, by direction.",
    );
    for (dir, (_, bytes)) in &forwarded {
        e.sample("cilium_forward_bytes_total", &[("direction", dir)], bytes);
    }
    e.family(
        "cilium_drop_count_total",
        "counter",
        "Packets the datapath dropped, by reason and direction.",
    );
    for ((reason, dir), (packets, _)) in &dropped {
        e.sample(
            "cilium_drop_count_total",
            &[("reason", reason), ("direction", dir)],
            packets,
        );
    }
    e.family(
        "cilium_drop_bytes_total",
        "counter",
        "Bytes the datapath dropped, by reason and direction.",
    );
    for ((reason, dir), (_, bytes)) in &dropped {
        e.sample(
            "cilium_drop_bytes_total",
            &[("reason", reason), ("direction", dir)],
            bytes,
        );
    }

    e.family(
        "cilium_monitor_events_lost_total",
        "counter",
        "Monitor events lost: the datapath's ring buffer was full (counted since its maps \
         were created), or a monitor reader was too slow (since the agent started).",
    );
    e.sample(
        "cilium_monitor_events_lost_total",
        &[],
        snapshot.datapath.as_ref().map_or(0, |d| d.events_lost),
    );

    e.family(
        "cilium_kvstore_up",
        "gauge",
        "1 when the kvstore answers (kvstore status Ok), else 0.",
    );
    e.sample("cilium_kvstore_up", &[], u8::from(snapshot.kvstore_up));

    e.family(
        "cilium_container_runtime_up",
        "gauge",
        "1 when the container runtime integration is connected (status Ok), else 0 (failing \
         or disabled).",
    );
    e.sample(
        "cilium_container_runtime_up",
        &[],
        u8::from(snapshot.container_runtime_up),
    );

    e.family(
        "cilium_api_request_duration_seconds",
        "histogram",
        "Time the agent took to answer an API request, from the request head to the reply \
         head, by method, path template and status code.",
    );
    for (template, method, code, h) in api.series() {
        e.histogram(
            "cilium_api_request_duration_seconds",
            &[
                ("method", method),
                ("path_template", &template),
                ("code", &code),
            ],
            &h.snapshot(),
        );
    }

    e.family(
        "cilium_cni_request_duration_seconds",
        "histogram",
        "Time the agent took to answer the request of a CNI ADD \
         (PUT /v1/endpoint/container-id:*) or DEL (DELETE /v1/endpoint/container-id:*), any \
         outcome.",
    );
    for (op, h) in [(CniOp::Add, &api.cni_add), (CniOp::Del, &api.cni_del)] {
        e.histogram(
            "cilium_cni_request_duration_seconds",
            &[("op", op.label())],
            &h.snapshot(),
        );
    }

    e.out
}

/// Why the metrics listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve Prometheus metrics on {addr} (--prometheus-serve-addr): {source}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// The bound TCP listener of `--prometheus-serve-addr`.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Binds `addr`. Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> Result<MetricsListener, MetricsError> {
        let err = |source| MetricsError { addr, source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(err)?;
        std_listener.set_nonblocking(true).map_err(err)?;
        let bound = std_listener.local_addr().map_err(err)?;
        let listener = TcpListener::from_std(std_listener).map_err(err)?;
        Ok(MetricsListener {
            listener,
            addr: bound,
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET /metrics` for as long as the agent lives (the task is aborted at shutdown).
    pub async fn serve(self, agent: Weak<Agent>) {
        let handle = move |request: Request<hyper::body::Incoming>| {
            let agent = agent.clone();
            async move { respond(&agent, &request).await }
        };
        let forever = std::future::pending::<()>();
        cilium_api::server::serve(&self.listener, "metrics listener", handle, forever).await;
    }
}

fn text_reply(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One request on the metrics listener: `GET` (or `HEAD`) `/metrics`, 404 elsewhere.
async fn respond<B>(agent: &Weak<Agent>, request: &Request<B>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.uri().path() != METRICS_PATH {
        return text_reply(StatusCode::NOT_FOUND, PLAIN, "404 page not found\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut reply = text_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            format!(
                "method {} not allowed on {METRICS_PATH}\n",
                request.method()
            ),
        );
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    let Some(agent) = agent.upgrade() else {
        return text_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the agent is shutting down\n".into(),
        );
    };
    // Reading the status takes the agent's locks: off the runtime's workers.
    match tokio::task::spawn_blocking(move || render(&Snapshot::gather(&agent), &API)).await {
        Ok(text) => text_reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(e) => text_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            PLAIN,
            format!("cannot collect the metrics: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use cilium_api::models::{DatapathCounter, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::AgentConfig;

    /// One parsed sample: metric name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A strict little parser of the text format: every sample belongs to a family declared
    /// by a `# TYPE` line before it (histograms by their `_bucket`/`_sum`/`_count` series),
    /// every label value is quoted, no series appears twice. Returns types and samples.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples: Vec<Sample> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "{line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = BTreeMap::new();
                    let mut chars = body.chars().peekable();
                    while chars.peek().is_some() {
                        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                        assert_eq!(chars.next(), Some('"'), "{line}");
                        let mut val = String::new();
                        loop {
                            match chars.next().expect("unterminated value") {
                                '\\' => match chars.next() {
                                    Some('n') => val.push('\n'),
                                    Some(c) => val.push(c),
                                    None => panic!("{line}"),
                                },
                                '"' => break,
                                c => val.push(c),
                            }
                        }
                        labels.insert(key, val);
                        if chars.peek() == Some(&',') {
                            chars.next();
                        }
                    }
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&name);
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            assert!(seen.insert(series.to_string()), "duplicate series {series}");
            samples.push((name, labels, value));
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.2)
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive_and_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(1) + Duration::from_nanos(1));
        h.observe(Duration::from_secs(40));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative[0], 1, "0.3 ms <= 0.5 ms");
        assert_eq!(s.cumulative[1], 2, "1 ms <= 1 ms");
        assert_eq!(s.cumulative[2], 3);
        assert_eq!(s.cumulative[BUCKETS.len() - 1], 3, "40 s is above 30 s");
        assert_eq!(s.cumulative[BUCKETS.len()], 4);
        assert!((s.sum_seconds - 40.0023).abs() < 1e-6, "{}", s.sum_seconds);
        assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
        for (secs, nanos) in BUCKETS.iter().zip(BUCKET_NANOS) {
            assert_eq!((secs * 1e9).round() as u64, nanos);
        }
    }

    #[test]
    fn api_series_are_labelled_by_template_method_and_code() {
        let api = ApiMetrics::new();
        let put = Route::parse("/v1/endpoint/container-id:abc").unwrap();
        let del = Route::parse("/v1/endpoint/container-id%3Aabc").unwrap();
        let local = Route::parse("/v1/endpoint/cilium-local:7").unwrap();
        assert_eq!(CniOp::of(&Method::PUT, &put), Some(CniOp::Add));
        assert_eq!(CniOp::of(&Method::DELETE, &del), Some(CniOp::Del));
        assert_eq!(CniOp::of(&Method::GET, &put), None);
        assert_eq!(CniOp::of(&Method::DELETE, &local), None);
        let ms = Duration::from_millis(3);
        api.observe(Some(put.index()), &Method::PUT, 201, Some(CniOp::Add), ms);
        api.observe(Some(put.index()), &Method::PUT, 201, Some(CniOp::Add), ms);
        api.observe(
            Some(del.index()),
            &Method::DELETE,
            404,
            Some(CniOp::Del),
            ms,
        );
        api.observe(None, &Method::GET, 404, None, ms);
        let odd = Method::from_bytes(b"BREW").unwrap();
        api.observe(Some(local.index()), &odd, 299, None, ms);

        let (types, samples) = parse(&render(&Snapshot::default(), &api));
        assert_eq!(types["cilium_api_request_duration_seconds"], "histogram");
        let api_count = |m: &str, t: &str, c: &str| {
            value(
                &samples,
                "cilium_api_request_duration_seconds_count",
                &[("method", m), ("path_template", t), ("code", c)],
            )
        };
        assert_eq!(api_count("PUT", "/v1/endpoint/{id}", "201"), Some(2.0));
        assert_eq!(api_count("DELETE", "/v1/endpoint/{id}", "404"), Some(1.0));
        assert_eq!(api_count("GET", "unknown", "404"), Some(1.0));
        assert_eq!(api_count("other", "/v1/endpoint/{id}", "other"), Some(1.0));
        assert_eq!(api_count("GET", "/v1/endpoint/{id}", "200"), None);
        let cni = |op: &str, suffix: &str, extra: &[(&str, &str)]| {
            let mut labels = vec![("op", op)];
            labels.extend_from_slice(extra);
            value(
                &samples,
                &format!("cilium_cni_request_duration_seconds{suffix}"),
                &labels,
            )
        };
        assert_eq!(cni("add", "_count", &[]), Some(2.0));
        assert_eq!(cni("del", "_count", &[]), Some(1.0));
        assert_eq!(cni("add", "_bucket", &[("le", "0.0025")]), Some(0.0));
        assert_eq!(cni("add", "_bucket", &[("le", "0.005")]), Some(2.0));
        assert_eq!(cni("add", "_bucket", &[("le", "+Inf")]), Some(2.0));
        assert!((cni("add", "_sum", &[]).unwrap() - 0.006).abs() < 1e-9);
    }

    #[test]
    fn render_shows_every_family_with_help_and_type() {
        let counter =
            |reason: u8, description: &str, direction: &str, packets, bytes| DatapathCounter {
                reason,
                description: description.into(),
                direction: direction.into(),
                packets,
                bytes,
            };
        let mut counts = AgentCounts {
            identities: 9,
            policy_revision: 4,
            policy_rules: 2,
            ..Default::default()
        };
        counts.count_endpoint(EndpointState::Ready);
        counts.count_endpoint(EndpointState::Ready);
        counts.count_endpoint(EndpointState::WaitingForIdentity);
        let snapshot = Snapshot {
            version: "1.2.3 \"dev\"".into(),
            counts,
            kvstore_up: true,
            container_runtime_up: false,
            datapath: Some(DatapathStatus {
                status: Status::new(StatusState::Ok, ""),
                pin_path: String::new(),
                counters: vec![
                    counter(0, "Forwarded", "ingress", 10, 1000),
                    counter(0, "Forwarded", "egress", 7, 700),
                    counter(133, "Policy denied (L3)", "ingress", 3, 180),
                    counter(133, "Policy denied (L3)", "ingress", 1, 60),
                    counter(159, "Policy denied (L4)", "egress", 2, 120),
                ],
                events_lost: 5,
            }),
        };
        let text = render(&snapshot, &ApiMetrics::new());
        let (types, samples) = parse(&text);
        for (name, kind) in [
            ("cilium_build_info", "gauge"),
            ("cilium_endpoint_count", "gauge"),
            ("cilium_identity_count", "gauge"),
            ("cilium_policy_revision", "gauge"),
            ("cilium_policy_count", "gauge"),
            ("cilium_forward_count_total", "counter"),
            ("cilium_forward_bytes_total", "counter"),
            ("cilium_drop_count_total", "counter"),
            ("cilium_drop_bytes_total", "counter"),
            ("cilium_monitor_events_lost_total", "counter"),
            ("cilium_kvstore_up", "gauge"),
            ("cilium_container_runtime_up", "gauge"),
            ("cilium_api_request_duration_seconds", "histogram"),
            ("cilium_cni_request_duration_seconds", "histogram"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert_eq!(types.len(), 14);
        let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
        assert_eq!(
            v("cilium_build_info", &[("version", "1.2.3 \"dev\"")]),
            Some(1.0)
        );
        assert!(text.contains(r#"cilium_build_info{version="1.2.3 \"dev\""} 1"#));
        assert_eq!(v("cilium_endpoint_count", &[("state", "ready")]), Some(2.0));
        assert_eq!(
            v(
                "cilium_endpoint_count",
                &[("state", "waiting-for-identity")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("cilium_endpoint_count", &[("state", "creating")]),
            Some(0.0)
        );
        assert_eq!(
            samples
                .iter()
                .filter(|s| s.0 == "cilium_endpoint_count")
                .count(),
            EndpointState::ALL.len()
        );
        assert_eq!(v("cilium_identity_count", &[]), Some(9.0));
        assert_eq!(v("cilium_policy_revision", &[]), Some(4.0));
        assert_eq!(v("cilium_policy_count", &[]), Some(2.0));
        assert_eq!(
            v("cilium_forward_count_total", &[("direction", "ingress")]),
            Some(10.0)
        );
        assert_eq!(
            v("cilium_forward_bytes_total", &[("direction", "egress")]),
            Some(700.0)
        );
        let drop = [("reason", "Policy denied (L3)"), ("direction", "ingress")];
        assert_eq!(v("cilium_drop_count_total", &drop), Some(4.0));
        assert_eq!(v("cilium_drop_bytes_total", &drop), Some(240.0));
        assert_eq!(
            v(
                "cilium_drop_count_total",
                &[("reason", "Policy denied (L4)"), ("direction", "egress")]
            ),
            Some(2.0)
        );
        assert_eq!(v("cilium_monitor_events_lost_total", &[]), Some(5.0));
        assert_eq!(v("cilium_kvstore_up", &[]), Some(1.0));
        assert_eq!(v("cilium_container_runtime_up", &[]), Some(0.0));
        let without_datapath = render(&Snapshot::default(), &ApiMetrics::new());
        assert!(!without_datapath.contains("cilium_forward_count_total{"));
        let empty = Snapshot {
            datapath: Some(DatapathStatus {
                status: Status::new(StatusState::Ok, ""),
                pin_path: String::new(),
                counters: Vec::new(),
                events_lost: 0,
            }),
            ..Default::default()
        };
        let (_, idle) = parse(&render(&empty, &ApiMetrics::new()));
        for dir in ["ingress", "egress"] {
            assert_eq!(
                value(&idle, "cilium_forward_count_total", &[("direction", dir)]),
                Some(0.0)
            );
        }
        // No API request yet: the CNI histograms are there at zero, no API series.
        assert_eq!(
            v(
                "cilium_cni_request_duration_seconds_count",
                &[("op", "add")]
            ),
            Some(0.0)
        );
        assert!(!text.contains("cilium_api_request_duration_seconds_count"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let mut e = Exposition { out: String::new() };
        e.family("x", "gauge", "line\\one\ntwo");
        assert_eq!(e.out, "# HELP x line\\\\one\\ntwo\n# TYPE x gauge\n");
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_of_a_live_agent_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            AgentConfig::with_dirs(dir.path().join("api.sock"), dir.path().join("state"));
        config.ipv4_range = Some("10.67.0.0/16".parse().unwrap());
        config.ipv6_range = Some("f00d::43:0:0/96".parse().unwrap());
        config.node_address = Some("192.0.2.67".parse().unwrap());
        let agent = Arc::new(Agent::start(config, Box::new(|_| {})).unwrap());
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        assert_ne!(addr.port(), 0);
        let task = tokio::spawn(listener.serve(Arc::downgrade(&agent)));

        // A second listener on the same address fails, naming it.
        let err = MetricsListener::bind(addr).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.contains("--prometheus-serve-addr"), "{msg}");

        let close = "Host: x\r\nConnection: close\r\n\r\n";
        let reply = get(addr, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        let (_, samples) = parse(body);
        assert_eq!(value(&samples, "cilium_kvstore_up", &[]), Some(1.0));
        assert_eq!(
            value(&samples, "cilium_container_runtime_up", &[]),
            Some(0.0)
        );
        assert_eq!(value(&samples, "cilium_policy_count", &[]), Some(0.0));
        assert!(value(&samples, "cilium_identity_count", &[]).unwrap() >= 1.0);
        assert_eq!(
            value(&samples, "cilium_build_info", &[]),
            Some(1.0),
            "{body}"
        );

        let head_only = get(addr, &format!("HEAD /metrics HTTP/1.1\r\n{close}")).await;
        assert!(head_only.starts_with("HTTP/1.1 200"), "{head_only}");
        assert!(head_only.ends_with("\r\n\r\n"), "{head_only}");
        for path in ["/", "/metrics/", "/v1/healthz", "/metricsx"] {
            let reply = get(addr, &format!("GET {path} HTTP/1.1\r\n{close}")).await;
            assert!(reply.starts_with("HTTP/1.1 404"), "{path}: {reply}");
        }
        let post = get(
            addr,
            &format!("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n{close}"),
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );

        // With the agent gone the listener answers 503 instead of keeping it alive.
        drop(agent);
        let reply = get(addr, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        task.abort();
    }
}
