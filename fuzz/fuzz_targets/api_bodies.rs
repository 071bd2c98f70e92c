//! Agent API requests, without an agent: the request path through `Route::parse`
//! (agent-core/src/api_server/routes.rs) and the query string through
//! `cilium_api::path::query_pairs`; the body decoded into the cilium-api model the handler of
//! that route and method decodes (agent-core/src/api_server/handlers.rs) and validated with
//! the same public functions the agent uses:
//!
//! - endpoint ids (`EndpointId` from path parameters, `cilium_api::endpoint_id`);
//! - `EndpointChangeRequest` (PUT/PATCH /endpoint/{id}): `EndpointRecord::from_request` and
//!   `apply_fields`;
//! - `ConfigurationMap` (PATCH /config, /endpoint/{id}/config): `OptionSet::apply`;
//! - `LabelsModifier` (PUT /endpoint/{id}/labels) and label lists: `labels::parse_list`;
//! - `ServiceSpec` (PUT /service/{id}): `service::parse_id`, `ServiceRecord::from_spec`,
//!   the service table's frontend check;
//! - IPAM parameters (`family`, `owner`, the `{ip}` of /ipam/{ip});
//! - `TraceSelector` (GET /policy/resolve): labels, ports, and a trace over a fixed policy;
//! - the monitor `type` filter.
//!
//! Every body is also decoded as each model regardless of the route.
//!
//! Input: `METHOD /v1/path?query`, a newline, the body.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use agent_core::api_server::routes::{Route, RouteError, ROUTES};
use agent_core::api_server::stream::MonitorFilter;
use agent_core::daemon::AGENT_OPTIONS;
use agent_core::endpoint::{EndpointRecord, ENDPOINT_OPTIONS};
use agent_core::labels::{self, Label, LabelSet};
use agent_core::options::OptionSet;
use agent_core::policy::trace::{trace, TraceRequest};
use agent_core::policy::{parse_rules, Enforcement, PortProtocol, Protocol, Rule};
use agent_core::service::{self, ServiceRecord, ServiceTable};
use cilium_api::models::{
    ConfigurationMap, EndpointChangeRequest, Family, LabelConfiguration, LabelsModifier,
    ServiceSpec, TraceSelector,
};
use cilium_api::path;
use cilium_api::EndpointId;
use libfuzzer_sys::fuzz_target;

/// The policy traces run against (the Docker guide's L3/L4 example).
const POLICY: &str = r#"[{
  "endpointSelector": {"matchLabels":{"id":"app1"}},
  "ingress": [{
    "fromEndpoints": [{"matchLabels":{"id":"app2"}}],
    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]
  }],
  "labels": ["unspec:name=fuzz"]
}]"#;

fn policy() -> &'static [Arc<Rule>] {
    static RULES: OnceLock<Vec<Arc<Rule>>> = OnceLock::new();
    RULES.get_or_init(|| {
        parse_rules(POLICY)
            .expect("the trace policy is valid")
            .into_iter()
            .map(Arc::new)
            .collect()
    })
}

/// `{id}` path parameters: parsed, printed and parsed again to the same id (clients send
/// the printed form).
fn endpoint_id(raw: &str) -> Option<EndpointId> {
    let id = raw.parse::<EndpointId>().ok()?;
    let printed = id.to_string();
    let again = printed
        .parse::<EndpointId>()
        .unwrap_or_else(|e| panic!("printed endpoint id {printed:?} of {raw:?} refused: {e}"));
    assert_eq!(again, id, "endpoint id {raw:?} printed as {printed:?}");
    Some(id)
}

/// The route's path parameter.
fn param(route: &Route) -> Option<&str> {
    match route {
        Route::IpamIp(p)
        | Route::Endpoint(p)
        | Route::EndpointConfig(p)
        | Route::EndpointLabels(p)
        | Route::EndpointHealth(p)
        | Route::Identity(p)
        | Route::MapPolicy(p)
        | Route::Service(p) => Some(p),
        _ => None,
    }
}

fn endpoint_change(body: &[u8]) {
    let Ok(req) = serde_json::from_slice::<EndpointChangeRequest>(body) else {
        return;
    };
    if let Some(id) = &req.docker_endpoint_id {
        let _ = endpoint_id(&format!("docker-endpoint:{id}"));
    }
    if let Ok(mut record) = EndpointRecord::from_request(1, &req) {
        let _ = record.apply_fields(&req);
        let _ = serde_json::to_vec(&record).expect("an endpoint record serializes");
    }
    let json = serde_json::to_vec(&req).expect("a request serializes");
    let back: EndpointChangeRequest = serde_json::from_slice(&json).expect("round trip");
    assert_eq!(back, req);
}

fn options(body: &[u8]) {
    let Ok(changes) = serde_json::from_slice::<ConfigurationMap>(body) else {
        return;
    };
    let _ = OptionSet::new(AGENT_OPTIONS).apply(&changes);
    let mut endpoint = OptionSet::with_defaults(ENDPOINT_OPTIONS);
    let before = endpoint.clone();
    if endpoint.apply(&changes).is_err() {
        assert_eq!(endpoint, before, "a refused change applied something");
    }
}

fn label_modifier(body: &[u8]) {
    let Ok(modifier) = serde_json::from_slice::<LabelsModifier>(body) else {
        return;
    };
    let _ = labels::parse_list(&modifier.add);
    let _ = labels::parse_list(&modifier.delete);
}

fn label_strings(list: &[String]) {
    for l in list {
        if let Ok(label) = l.parse::<Label>() {
            let printed = label.to_string();
            let again = printed
                .parse::<Label>()
                .unwrap_or_else(|e| panic!("printed label {printed:?} of {l:?} refused: {e}"));
            assert_eq!(again, label, "label {l:?} printed as {printed:?}");
        }
    }
    let _ = labels::parse_list(list);
    let _ = LabelSet::parse(list);
}

fn service_spec(raw_id: Option<&str>, body: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<ServiceSpec>(body) else {
        return;
    };
    let id = match raw_id.map(service::parse_id) {
        Some(Ok(id)) => id,
        Some(Err(_)) => return,
        None => spec.id.max(1),
    };
    let Ok(record) = ServiceRecord::from_spec(id, &spec) else {
        return;
    };
    // The accepted form is what the agent saves and serves; it must validate again.
    let canonical = record.to_spec();
    let again = ServiceRecord::from_spec(id, &canonical)
        .unwrap_or_else(|e| panic!("canonical service {canonical:?} refused: {e}"));
    assert_eq!(again, record, "service spec round trip");
    let mut table = ServiceTable::default();
    table.check(&record).expect("an empty table has no overlap");
    table.insert(record.clone());
    table
        .check(&record)
        .expect("a service does not overlap itself");
    let _ = table.specs();
}

fn trace_selector(body: &[u8]) {
    let Ok(sel) = serde_json::from_slice::<TraceSelector>(body) else {
        return;
    };
    for ep in [&sel.from_endpoint, &sel.to_endpoint].into_iter().flatten() {
        let _ = endpoint_id(ep);
    }
    label_strings(&sel.from);
    label_strings(&sel.to);
    let (Ok(from), Ok(to)) = (LabelSet::parse(&sel.from), LabelSet::parse(&sel.to)) else {
        return;
    };
    let ports: Option<Vec<PortProtocol>> = sel
        .dports
        .iter()
        .map(|p| {
            Some(PortProtocol {
                port: p.port,
                protocol: Protocol::parse(&p.protocol)?,
            })
        })
        .collect();
    let Some(ports) = ports else {
        return;
    };
    let _ = trace(
        policy(),
        Enforcement::Default,
        TraceRequest {
            from: &from,
            to: &to,
            ports: &ports,
            verbose: sel.verbose,
        },
    );
}

fn query(query: &str) {
    let Some(pairs) = path::query_pairs(query) else {
        return;
    };
    for (key, value) in pairs {
        match key.as_str() {
            "family" => {
                let _ = value.parse::<Family>();
            }
            "type" => {
                let _ = value.parse::<MonitorFilter>();
            }
            "labels" => {
                let list: Vec<String> = value
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                label_strings(&list);
            }
            _ => {}
        }
    }
}

fn route(method: &str, target: &str, body: &[u8]) {
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    query(raw_query);
    let route = match Route::parse(raw_path) {
        Ok(route) => route,
        Err(RouteError::NotFound | RouteError::BadEncoding) => return,
    };
    let spec = route.spec();
    assert!(ROUTES.iter().any(|r| r.template == spec.template));
    // Clients build paths with `path::encode`: the route must come back the same.
    if let Some(p) = param(&route) {
        let built = format!(
            "{}{}",
            cilium_api::API_BASE,
            spec.template
                .replace("{id}", &path::encode(p))
                .replace("{ip}", &path::encode(p))
        );
        assert_eq!(
            Route::parse(&built).as_ref(),
            Ok(&route),
            "{built} from {raw_path}"
        );
    }
    let param = param(&route).map(str::to_string);
    match (&route, method) {
        (Route::Endpoint(_) | Route::EndpointConfig(_) | Route::EndpointLabels(_), _)
        | (Route::EndpointHealth(_) | Route::MapPolicy(_), _) => {
            let _ = endpoint_id(param.as_deref().unwrap_or_default());
        }
        (Route::IpamIp(ip), _) => {
            let _ = ip.parse::<IpAddr>();
        }
        (Route::Identity(id), _) => {
            let _ = id.parse::<u32>();
        }
        _ => {}
    }
    match (route, method) {
        (Route::Endpoint(_), "PUT" | "PATCH") => endpoint_change(body),
        (Route::Config | Route::EndpointConfig(_), "PATCH") => options(body),
        (Route::EndpointLabels(_), "PUT") => label_modifier(body),
        (Route::Policy, "PUT") => {
            if let Ok(text) = std::str::from_utf8(body) {
                let _ = parse_rules(text);
            }
        }
        (Route::Policy, "DELETE") => {
            if let Ok(list) = serde_json::from_slice::<Vec<String>>(body) {
                label_strings(&list);
            }
        }
        (Route::PolicyResolve, "GET") => trace_selector(body),
        (Route::Service(_), "PUT") => service_spec(param.as_deref(), body),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(nl) => (&data[..nl], &data[nl + 1..]),
        None => (data, &b""[..]),
    };
    if let Ok(head) = std::str::from_utf8(head) {
        let (method, target) = head.split_once(' ').unwrap_or(("GET", head));
        route(method, target, body);
        // Path parameters as ids, whatever the route.
        let _ = endpoint_id(target);
        let decoded = path::decode(target, false);
        if let Some(decoded) = decoded {
            assert_eq!(path::decode(&path::encode(&decoded), false), Some(decoded));
        }
    }

    // Every body as every model, whatever the route.
    endpoint_change(body);
    options(body);
    label_modifier(body);
    service_spec(None, body);
    trace_selector(body);
    let _ = serde_json::from_slice::<LabelConfiguration>(body);
    if let Ok(list) = serde_json::from_slice::<Vec<String>>(body) {
        label_strings(&list);
    }
});
