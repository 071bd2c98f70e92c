//! Test fixtures: endpoints as the agent returns them and a recording fake agent.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cilium_api::models::{
    Endpoint, EndpointChangeRequest, EndpointHealth, PartialDelete, Status, StatusResponse,
    StatusState,
};
use cilium_api::{ClientError, EndpointId};
use serde_json::json;

use crate::agent::Agent;

/// The router addresses the fake agent hands out.
pub const GATEWAY_V4: &str = "10.11.0.1";
pub const GATEWAY_V6: &str = "f00d::a0b:0:0:1";

/// An endpoint `c1` on `lxc1234`/`eth0` with the given addresses and the router as gateway
/// of each family present.
pub fn endpoint(ipv4: Option<&str>, ipv6: Option<&str>) -> Endpoint {
    let mut ep = json!({
        "id": 7, "state": "ready", "container-id": "c1",
        "interface-name": "lxc1234", "host-mac": "aa:aa:aa:aa:aa:aa",
        "container-interface-name": "eth0", "mac": "bb:bb:bb:bb:bb:bb",
        "netns-path": "/var/run/netns/c1",
        "addressing": {}, "gateway": {}
    });
    if let Some(v4) = ipv4 {
        ep["addressing"]["ipv4"] = json!(v4);
        ep["gateway"]["ipv4"] = json!(GATEWAY_V4);
    }
    if let Some(v6) = ipv6 {
        ep["addressing"]["ipv6"] = json!(v6);
        ep["gateway"]["ipv6"] = json!(GATEWAY_V6);
    }
    serde_json::from_value(ep).unwrap()
}

/// An in-memory agent: endpoints keyed by container id, every call recorded, failures
/// injected per operation.
#[derive(Debug, Default)]
pub struct FakeAgent {
    pub endpoints: RefCell<Vec<Endpoint>>,
    /// `"op target"` for every call, in order.
    pub calls: RefCell<Vec<String>>,
    /// The last create request.
    pub created: RefCell<Option<EndpointChangeRequest>>,
    /// Operation name → HTTP status to fail with.
    pub fail: RefCell<HashMap<&'static str, u16>>,
    /// Every request fails to connect.
    pub unreachable: Cell<bool>,
    /// The next this many requests fail to connect (an agent restarting).
    pub unreachable_for: Cell<u32>,
    /// `endpoint_create` creates the endpoint but its reply is lost (unusable).
    pub lost_reply: Cell<bool>,
    /// What `endpoint_health` answers.
    pub health: RefCell<EndpointHealth>,
    /// What `endpoint_delete` answers on success.
    pub partial: RefCell<Option<PartialDelete>>,
    socket: PathBuf,
}

impl FakeAgent {
    pub fn new() -> Self {
        FakeAgent {
            socket: PathBuf::from("/run/fake/cilium.sock"),
            health: RefCell::new(EndpointHealth {
                connected: true,
                problems: vec![],
            }),
            ..FakeAgent::default()
        }
    }

    pub fn with_endpoints(endpoints: Vec<Endpoint>) -> Self {
        let agent = FakeAgent::new();
        *agent.endpoints.borrow_mut() = endpoints;
        agent
    }

    pub fn fail(&self, op: &'static str, status: u16) {
        self.fail.borrow_mut().insert(op, status);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn enter(&self, op: &'static str, target: &str) -> Result<(), ClientError> {
        self.calls
            .borrow_mut()
            .push(format!("{op} {target}").trim().to_string());
        let down = self.unreachable_for.get();
        if down > 0 {
            self.unreachable_for.set(down - 1);
        }
        if self.unreachable.get() || down > 0 {
            return Err(ClientError::Connect {
                path: self.socket.clone(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
            });
        }
        match self.fail.borrow().get(op) {
            Some(&status) => Err(ClientError::Api {
                status,
                message: format!("injected {op} failure"),
            }),
            None => Ok(()),
        }
    }

    fn not_found(id: &EndpointId) -> ClientError {
        ClientError::Api {
            status: 404,
            message: format!("endpoint {id} not found"),
        }
    }

    fn position(&self, id: &EndpointId) -> Option<usize> {
        self.endpoints.borrow().iter().position(|ep| match id {
            EndpointId::ContainerId(c) => &ep.container_id == c,
            EndpointId::CiliumLocal(n) => ep.id == *n,
            _ => false,
        })
    }
}

impl Agent for FakeAgent {
    fn socket_path(&self) -> &Path {
        &self.socket
    }

    async fn healthz(&self) -> Result<StatusResponse, ClientError> {
        self.enter("healthz", "")?;
        let ok = || Status::new(StatusState::Ok, "");
        Ok(StatusResponse {
            cilium: ok(),
            kvstore: ok(),
            container_runtime: ok(),
            kubernetes: ok(),
            ipam: Default::default(),
            datapath: None,
            cluster: None,
            proxy: None,
            version: "fake".into(),
        })
    }

    async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        self.enter("create", &id.to_string())?;
        if self.position(id).is_some() {
            return Err(ClientError::Api {
                status: 409,
                message: format!("endpoint {id} exists"),
            });
        }
        *self.created.borrow_mut() = Some(request.clone());
        let n = self.endpoints.borrow().len() + 5;
        let mut ep = endpoint(
            Some(&format!("10.11.0.{n}")),
            Some(&format!("f00d::a0b:0:0:{n}")),
        );
        ep.id = u16::try_from(n).unwrap();
        ep.container_id = request.container_id.clone().unwrap_or_default();
        ep.container_interface_name = request.container_interface_name.clone().unwrap_or_default();
        ep.netns_path = request.netns_path.clone().unwrap_or_default();
        ep.cni_network = request.cni_network.clone().unwrap_or_default();
        ep.labels = request.labels.clone().unwrap_or_default();
        ep.pod_name = request.pod_name.clone().unwrap_or_default();
        ep.mtu = request.mtu.unwrap_or(1500);
        self.endpoints.borrow_mut().push(ep.clone());
        if self.lost_reply.get() {
            return Err(ClientError::Decode {
                what: format!("PUT /endpoint/{id}"),
                source: serde_json::from_str::<u8>("").unwrap_err(),
            });
        }
        Ok(ep)
    }

    async fn endpoint_get(&self, id: &EndpointId) -> Result<Endpoint, ClientError> {
        self.enter("get", &id.to_string())?;
        let i = self.position(id).ok_or_else(|| Self::not_found(id))?;
        Ok(self.endpoints.borrow()[i].clone())
    }

    async fn endpoint_delete(&self, id: &EndpointId) -> Result<Option<PartialDelete>, ClientError> {
        self.enter("delete", &id.to_string())?;
        let i = self.position(id).ok_or_else(|| Self::not_found(id))?;
        self.endpoints.borrow_mut().remove(i);
        Ok(self.partial.borrow().clone())
    }

    async fn endpoint_health(&self, id: &EndpointId) -> Result<EndpointHealth, ClientError> {
        self.enter("health", &id.to_string())?;
        self.position(id).ok_or_else(|| Self::not_found(id))?;
        Ok(self.health.borrow().clone())
    }

    async fn endpoint_list(&self) -> Result<Vec<Endpoint>, ClientError> {
        self.enter("list", "")?;
        Ok(self.endpoints.borrow().clone())
    }
}

/// Runs a future to completion on a current-thread runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A network config from JSON (`name` and `type` added when absent).
pub fn config(mut value: serde_json::Value) -> crate::config::NetworkConfig {
    let object = value.as_object_mut().unwrap();
    object.entry("name").or_insert(json!("cilium"));
    object.entry("type").or_insert(json!("cilium-cni"));
    crate::config::NetworkConfig::parse(value.to_string().as_bytes()).unwrap()
}

/// `ADD`/`CHECK` variables for container `c1`, interface `eth0`, in `netns`.
pub fn target(netns: &Path, args: &str) -> crate::env::Target {
    crate::env::Target {
        container_id: "c1".into(),
        ifname: "eth0".into(),
        netns: netns.to_str().unwrap().to_string(),
        args: crate::env::CniArgs::parse(args).unwrap(),
    }
}
