//! Request handling: routes a request, reads its body within the size limit, parses it into a
//! call on the [`Agent`], and turns the result (or the error) into a JSON reply with the
//! status codes of the API reference. The one place where errors become HTTP statuses.
//! `GET /monitor` is the one reply whose body is streamed (see [`super::stream`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use cilium_api::models::{
    ConfigurationMap, EndpointChangeRequest, ErrorResponse, Family, LabelsModifier, PartialDelete,
    ServiceSpec, TraceSelector,
};
use cilium_api::server::BodyError;
use cilium_api::{EndpointId, MAX_BODY_BYTES};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::routes::{Route, RouteError};
use super::stream::{MonitorFilter, MonitorStream};
use crate::daemon::{Agent, AgentError};
use crate::datapath::DatapathError;
use crate::endpoint::EndpointError;
use crate::identity::IdentityError;
use crate::ipam::IpamError;
use crate::kvstore::KvstoreError;
use crate::labels::Label;
use crate::link::LinkError;
use crate::netns::NetnsError;
use crate::policy::PolicyError;
use crate::service::ServiceError;

/// The body of a reply: a whole JSON document, or the stream of `GET /monitor`.
pub type ReplyBody = UnsyncBoxBody<Bytes, Infallible>;

/// A reply: status and body.
pub type Reply = Response<ReplyBody>;

/// An error reply in the making.
#[derive(Debug)]
struct Failure {
    status: u16,
    message: String,
}

impl Failure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::new(status_of(&e), e.to_string())
    }
}

impl From<EndpointError> for Failure {
    fn from(e: EndpointError) -> Self {
        AgentError::from(e).into()
    }
}

/// The status code of an agent error (API reference, seed §8).
pub fn status_of(e: &AgentError) -> u16 {
    match e {
        AgentError::Ipam(e) => match e {
            IpamError::FamilyDisabled(_) => 501,
            IpamError::Exhausted { .. } => 502,
            IpamError::OutOfRange { .. } | IpamError::NotAllocatable { .. } => 400,
            IpamError::AlreadyAllocated { .. } => 409,
            IpamError::NotAllocated { .. } => 404,
            IpamError::RangeTooSmall { .. }
            | IpamError::StateMismatch { .. }
            | IpamError::SavedFamilyDisabled { .. } => 500,
        },
        AgentError::Endpoint(e) => match e {
            EndpointError::NotFound(_) => 404,
            EndpointError::Conflict(_) => 409,
            EndpointError::LabelNotFound { .. } => 460,
            EndpointError::NoFreeId => 500,
            EndpointError::Ambiguous { .. }
            | EndpointError::Invalid(_)
            | EndpointError::BadId(_)
            | EndpointError::Label(_)
            | EndpointError::BadTransition { .. } => 400,
        },
        AgentError::AddressInUse { .. } => 409,
        AgentError::Link(e) => match e {
            LinkError::Exists { .. } => 409,
            LinkError::Netns(NetnsError::Missing { .. } | NetnsError::NotNetns { .. }) => 400,
            _ => 500,
        },
        AgentError::State(_) => 500,
        AgentError::Option(_) | AgentError::Invalid(_) => 400,
        AgentError::Identity(e) => match e {
            IdentityError::UnknownId(_) => 404,
            IdentityError::Kvstore(KvstoreError::Unreachable { .. }) => 520,
            IdentityError::Corrupt { .. } => 521,
            _ => 500,
        },
        AgentError::Policy(e) => match e {
            PolicyError::NotFound(_) => 404,
            PolicyError::Json(_) | PolicyError::Format(_) | PolicyError::Invalid { .. } => 400,
        },
        AgentError::Datapath(e) => match e {
            DatapathError::Disabled(_) => 503,
            _ => 500,
        },
        AgentError::Service(e) => match e {
            ServiceError::BadId(_) | ServiceError::IdMismatch { .. } => 400,
            ServiceError::NotFound(_) => 404,
            ServiceError::InvalidFrontend(_) => 460,
            ServiceError::InvalidBackend { .. } => 461,
        },
    }
}

fn json_reply<T: Serialize>(status: u16, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => build(status, body),
        Err(e) => error_reply(500, &format!("cannot encode the reply: {e}")),
    }
}

fn build(status: u16, body: Vec<u8>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 200 with a body of newline-delimited JSON records, sent as they come.
fn stream_reply(stream: MonitorStream) -> Reply {
    let mut response = Response::new(stream.boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(super::stream::CONTENT_TYPE),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn error_reply(status: u16, message: &str) -> Reply {
    let body = serde_json::to_vec(&ErrorResponse {
        error: message.to_string(),
    })
    .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    build(status, body)
}

/// Serves one request. Never fails: every problem becomes an error reply.
pub async fn handle<B>(agent: Arc<Agent>, request: Request<B>) -> Result<Reply, Infallible>
where
    B: Body,
    B::Error: Display + Send + Sync + 'static + std::error::Error,
{
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let parsed = Route::parse(&path);
    let timer = crate::metrics::RequestTimer::start(&method, parsed.as_ref().ok());
    let reply = match parsed {
        Err(RouteError::NotFound) => error_reply(404, &format!("no such API path: {path}")),
        Err(RouteError::BadEncoding) => {
            error_reply(400, &format!("malformed percent-encoding in path {path}"))
        }
        Ok(route) if !route.spec().methods.contains(&method) => {
            let allowed: Vec<&str> = route.spec().methods.iter().map(Method::as_str).collect();
            let mut reply = error_reply(
                405,
                &format!(
                    "method {method} is not allowed on {path} (allowed: {})",
                    allowed.join(", ")
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                reply.headers_mut().insert(header::ALLOW, value);
            }
            reply
        }
        Ok(route) => match read_body(request).await {
            Ok(body) => {
                let result = if may_block(&route, &method) {
                    let method = method.clone();
                    tokio::task::spawn_blocking(move || {
                        dispatch(&agent, route, &method, &query, &body)
                    })
                    .await
                    .unwrap_or_else(|e| Err(Failure::new(500, format!("request failed: {e}"))))
                } else {
                    dispatch(&agent, route, &method, &query, &body)
                };
                match result {
                    Ok(reply) => reply,
                    Err(f) => error_reply(f.status, &f.message),
                }
            }
            Err(f) => error_reply(f.status, &f.message),
        },
    };
    timer.finish(reply.status().as_u16());
    tracing::debug!(%method, %path, status = reply.status().as_u16(), "api request");
    Ok(reply)
}

/// Requests that may block: netlink work, state files written with fsync, kvstore calls,
/// policy computation. They run on the blocking pool, off the runtime's workers.
fn may_block(route: &Route, method: &Method) -> bool {
    !matches!(
        (route, method),
        (Route::Healthz, _) | (Route::Config, &Method::GET)
    )
}

async fn read_body<B>(request: Request<B>) -> Result<Bytes, Failure>
where
    B: Body,
    B::Error: Display + Send + Sync + 'static + std::error::Error,
{
    cilium_api::server::read_body(request, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => Failure::new(413, e.to_string()),
            BodyError::Read(_) => Failure::new(400, e.to_string()),
            BodyError::Timeout(_) => Failure::new(408, e.to_string()),
        })
}

fn json_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Failure> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::new(
            400,
            format!("request body is empty: expected {what} as JSON"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| Failure::new(400, format!("invalid {what}: {e}")))
}

/// Query parameters, refusing unknown and repeated ones.
fn query_params(query: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>, Failure> {
    let pairs = cilium_api::path::query_pairs(query)
        .ok_or_else(|| Failure::new(400, "malformed percent-encoding in the query string"))?;
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        if !allowed.contains(&key.as_str()) {
            let known = if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            };
            return Err(Failure::new(
                400,
                format!("unknown query parameter '{key}' (accepted: {known})"),
            ));
        }
        if out.insert(key.clone(), value).is_some() {
            return Err(Failure::new(
                400,
                format!("query parameter '{key}' given twice"),
            ));
        }
    }
    Ok(out)
}

/// The `labels=a,b` query filter of list requests.
fn label_filter(query: &str) -> Result<Vec<Label>, Failure> {
    let params = query_params(query, &["labels"])?;
    params
        .get("labels")
        .map(|list| {
            list.split(',')
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.trim().parse::<Label>())
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| Failure::new(400, e.to_string()))
        .map(Option::unwrap_or_default)
}

fn endpoint_id(raw: &str) -> Result<EndpointId, Failure> {
    raw.parse::<EndpointId>()
        .map_err(|e| Failure::new(400, e.to_string()))
}

fn service_id(raw: &str) -> Result<u16, Failure> {
    crate::service::parse_id(raw).map_err(|e| AgentError::from(e).into())
}

fn ip_param(raw: &str) -> Result<IpAddr, Failure> {
    raw.parse::<IpAddr>()
        .map_err(|_| Failure::new(400, format!("invalid IP address '{raw}'")))
}

fn dispatch(
    agent: &Arc<Agent>,
    route: Route,
    method: &Method,
    query: &str,
    body: &[u8],
) -> Result<Reply, Failure> {
    let no_query = |q: &str| query_params(q, &[]).map(|_| ());
    match (route, method.clone()) {
        (Route::Healthz, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.status()))
        }
        (Route::Config, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.configuration()))
        }
        (Route::Config, Method::PATCH) => {
            no_query(query)?;
            let changes: ConfigurationMap = json_body(body, "an option map")?;
            Ok(json_reply(200, &agent.patch_configuration(&changes)?))
        }
        (Route::Ipam, Method::POST) => {
            let params = query_params(query, &["family", "owner"])?;
            let family = params
                .get("family")
                .filter(|f| !f.is_empty())
                .map(|f| f.parse::<Family>().map_err(|e| Failure::new(400, e)))
                .transpose()?;
            let owner = params.get("owner").map(String::as_str).unwrap_or("");
            Ok(json_reply(201, &agent.ipam_allocate(family, owner)?))
        }
        (Route::IpamIp(ip), Method::POST) => {
            let params = query_params(query, &["owner"])?;
            let owner = params.get("owner").map(String::as_str).unwrap_or("");
            Ok(json_reply(200, &agent.ipam_reserve(ip_param(&ip)?, owner)?))
        }
        (Route::IpamIp(ip), Method::DELETE) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.ipam_release(ip_param(&ip)?)?))
        }
        (Route::Endpoints, Method::GET) => {
            let filter = label_filter(query)?;
            let list = agent.endpoint_list(&filter);
            if list.is_empty() && !filter.is_empty() {
                return Err(Failure::new(
                    404,
                    "no endpoint carries all of the given labels",
                ));
            }
            Ok(json_reply(200, &list))
        }
        (Route::Endpoint(id), Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.endpoint_get(&endpoint_id(&id)?)?))
        }
        (Route::Endpoint(id), Method::PUT) => {
            no_query(query)?;
            let id = endpoint_id(&id)?;
            let req: EndpointChangeRequest = json_body(body, "an endpoint change request")?;
            Ok(json_reply(201, &agent.endpoint_create(&id, req)?))
        }
        (Route::Endpoint(id), Method::PATCH) => {
            no_query(query)?;
            let id = endpoint_id(&id)?;
            let req: EndpointChangeRequest = json_body(body, "an endpoint change request")?;
            Ok(json_reply(200, &agent.endpoint_patch(&id, req)?))
        }
        (Route::Endpoint(id), Method::DELETE) => {
            no_query(query)?;
            let outcome = agent.endpoint_delete(&endpoint_id(&id)?)?;
            if outcome.errors.is_empty() {
                Ok(json_reply(200, &outcome.endpoint))
            } else {
                let partial = PartialDelete {
                    error: format!(
                        "endpoint {} deleted with errors: {}",
                        outcome.endpoint.id,
                        outcome.errors.join("; ")
                    ),
                    errors: outcome.errors.len() as u32,
                };
                Ok(json_reply(206, &partial))
            }
        }
        (Route::EndpointConfig(id), Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.endpoint_config(&endpoint_id(&id)?)?))
        }
        (Route::EndpointConfig(id), Method::PATCH) => {
            no_query(query)?;
            let id = endpoint_id(&id)?;
            let changes: ConfigurationMap = json_body(body, "an option map")?;
            Ok(json_reply(
                200,
                &agent.endpoint_config_patch(&id, &changes)?,
            ))
        }
        (Route::EndpointLabels(id), Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.endpoint_labels(&endpoint_id(&id)?)?))
        }
        (Route::EndpointLabels(id), Method::PUT) => {
            no_query(query)?;
            let id = endpoint_id(&id)?;
            let modifier: LabelsModifier = json_body(body, "a label modifier")?;
            Ok(json_reply(
                200,
                &agent.endpoint_labels_modify(&id, &modifier)?,
            ))
        }
        (Route::EndpointHealth(id), Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.endpoint_health(&endpoint_id(&id)?)?))
        }
        (Route::Identities, Method::GET) => {
            let filter = label_filter(query)?;
            let list = agent.identity_list(&filter);
            if list.is_empty() && !filter.is_empty() {
                return Err(Failure::new(
                    404,
                    "no identity carries all of the given labels",
                ));
            }
            Ok(json_reply(200, &list))
        }
        (Route::Identity(raw), Method::GET) => {
            no_query(query)?;
            let id = raw.parse::<u32>().map_err(|_| {
                Failure::new(400, format!("invalid identity '{raw}': expected a number"))
            })?;
            Ok(json_reply(200, &agent.identity_get(id)?))
        }
        (Route::Policy, Method::GET) => {
            let filter = label_filter(query)?;
            Ok(json_reply(200, &agent.policy_get(&filter)?))
        }
        (Route::Policy, Method::PUT) => {
            no_query(query)?;
            let text = std::str::from_utf8(body)
                .map_err(|_| Failure::new(400, "the policy is not UTF-8 text"))?;
            if text.trim().is_empty() {
                return Err(Failure::new(
                    400,
                    "request body is empty: expected the policy rules as JSON",
                ));
            }
            Ok(json_reply(200, &agent.policy_import(text)?))
        }
        (Route::Policy, Method::DELETE) => {
            no_query(query)?;
            let labels: Vec<String> = json_body(body, "a list of rule labels")?;
            let labels = labels
                .iter()
                .map(|l| l.parse::<Label>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::new(400, e.to_string()))?;
            Ok(json_reply(200, &agent.policy_delete(&labels)?))
        }
        (Route::PolicyResolve, Method::GET) => {
            no_query(query)?;
            let selector: TraceSelector = json_body(body, "a trace selector")?;
            Ok(json_reply(200, &agent.policy_resolve(&selector)?))
        }
        (Route::Monitor, Method::GET) => {
            let params = query_params(query, &["type"])?;
            let filter = params
                .get("type")
                .map(|t| t.parse::<MonitorFilter>().map_err(|e| Failure::new(400, e)))
                .transpose()?;
            let events = agent.monitor_subscribe()?;
            let counter = Arc::clone(agent);
            Ok(stream_reply(
                MonitorStream::new(events, filter)
                    .with_lost_hook(Box::new(move |n| counter.monitor_lost(n))),
            ))
        }
        (Route::MapEndpoint, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.bpf_endpoints()?))
        }
        (Route::MapIpcache, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.bpf_ipcache()?))
        }
        (Route::MapCt, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.bpf_ct()?))
        }
        (Route::MapLb, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.bpf_lb()?))
        }
        (Route::MapTunnel, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.bpf_tunnel()?))
        }
        (Route::Nodes, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.node_list()))
        }
        (Route::MapPolicy(id), Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.bpf_policy(&endpoint_id(&id)?)?))
        }
        (Route::Services, Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.service_list()))
        }
        (Route::Service(id), Method::GET) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.service_get(service_id(&id)?)?))
        }
        (Route::Service(id), Method::PUT) => {
            no_query(query)?;
            let id = service_id(&id)?;
            let spec: ServiceSpec = json_body(body, "a service specification")?;
            let (created, service) = agent.service_upsert(id, spec)?;
            Ok(json_reply(if created { 201 } else { 200 }, &service))
        }
        (Route::Service(id), Method::DELETE) => {
            no_query(query)?;
            Ok(json_reply(200, &agent.service_delete(service_id(&id)?)?))
        }
        (route, method) => Err(Failure::new(
            405,
            format!(
                "method {method} is not allowed on {}",
                route.spec().template
            ),
        )),
    }
}
