//! A recording fake of the agent for the unit tests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use cilium_api::models::{
    AddressPair, Endpoint, EndpointChangeRequest, Family, NodeAddressing, NodeAddressingElement,
    PartialDelete,
};
use cilium_api::{ClientError, EndpointId};

use crate::agent::Agent;

/// MAC of the veth peer the fake agent "creates".
pub const PEER_MAC: &str = "02:42:0a:0b:00:05";

#[derive(Debug, Default)]
pub struct FakeAgent {
    pub addressing: NodeAddressing,
    /// One line per call, e.g. `allocate ipv4 docker-ipam`.
    calls: Mutex<Vec<String>>,
    created: Mutex<Vec<(EndpointId, EndpointChangeRequest)>>,
    /// Operation (first word of the call line) → the API error its next call returns.
    failures: Mutex<HashMap<String, (u16, String)>>,
}

fn element(ip: &str, range: &str) -> NodeAddressingElement {
    NodeAddressingElement {
        enabled: true,
        ip: ip.parse().ok(),
        alloc_range: Some(range.to_string()),
    }
}

impl FakeAgent {
    pub fn dual_stack() -> FakeAgent {
        FakeAgent {
            addressing: NodeAddressing {
                ipv4: element("10.11.0.1", "10.11.0.0/16"),
                ipv6: element("fd00:11::1", "fd00:11::/112"),
            },
            ..FakeAgent::default()
        }
    }

    pub fn ipv4_only() -> FakeAgent {
        let mut agent = FakeAgent::dual_stack();
        agent.addressing.ipv6 = NodeAddressingElement::default();
        agent
    }

    /// Makes the next call of `op` fail with an API error.
    pub fn fail(&self, op: &str, status: u16, message: &str) {
        self.failures
            .lock()
            .unwrap()
            .insert(op.to_string(), (status, message.to_string()));
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn created(&self) -> Vec<(EndpointId, EndpointChangeRequest)> {
        self.created.lock().unwrap().clone()
    }

    fn record(&self, call: String) -> Result<(), ClientError> {
        let op = call.split(' ').next().unwrap_or_default().to_string();
        self.calls.lock().unwrap().push(call);
        match self.failures.lock().unwrap().remove(&op) {
            Some((status, message)) => Err(ClientError::Api { status, message }),
            None => Ok(()),
        }
    }
}

impl Agent for FakeAgent {
    async fn healthz(&self) -> Result<(), ClientError> {
        self.record("healthz".into())
    }

    async fn addressing(&self) -> Result<NodeAddressing, ClientError> {
        self.record("config".into())?;
        Ok(self.addressing.clone())
    }

    async fn ipam_allocate(&self, family: Family, owner: &str) -> Result<AddressPair, ClientError> {
        self.record(format!("allocate {family} {owner}"))?;
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        Ok(match family {
            Family::Ipv4 => AddressPair {
                ipv4: ip("10.11.0.5"),
                ipv6: None,
            },
            Family::Ipv6 => AddressPair {
                ipv4: None,
                ipv6: ip("fd00:11::5"),
            },
        })
    }

    async fn ipam_reserve(&self, ip: IpAddr, owner: &str) -> Result<(), ClientError> {
        self.record(format!("reserve {ip} {owner}"))
    }

    async fn ipam_release(&self, ip: IpAddr) -> Result<(), ClientError> {
        self.record(format!("release {ip}"))
    }

    async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        self.record(format!("endpoint-create {id}"))?;
        self.created
            .lock()
            .unwrap()
            .push((id.clone(), request.clone()));
        Ok(serde_json::from_value(serde_json::json!({
            "id": 42,
            "state": "waiting-for-identity",
            "mac": PEER_MAC,
            "interface-name": "lxc0123",
        }))
        .unwrap())
    }

    async fn endpoint_delete(&self, id: &EndpointId) -> Result<Option<PartialDelete>, ClientError> {
        self.record(format!("endpoint-delete {id}"))?;
        Ok(None)
    }
}

/// A driver over a [`FakeAgent`] with its own state dir and fake `/sys/class/net`, called
/// through [`crate::server::handle`] so tests see the exact wire format.
#[derive(Debug)]
pub struct Harness {
    pub driver: crate::driver::Driver<FakeAgent>,
    pub state: tempfile::TempDir,
    pub sys_class_net: tempfile::TempDir,
}

impl Harness {
    pub fn new(agent: FakeAgent) -> Harness {
        let state = tempfile::tempdir().unwrap();
        let sys_class_net = tempfile::tempdir().unwrap();
        let networks = crate::state::NetworkStore::open(state.path()).unwrap();
        let driver =
            crate::driver::Driver::new(agent, networks).with_sys_class_net(sys_class_net.path());
        Harness {
            driver,
            state,
            sys_class_net,
        }
    }

    pub fn agent(&self) -> &FakeAgent {
        self.driver.agent()
    }

    /// Makes the veth peer of `endpoint_id` appear, as the agent would.
    pub fn make_peer(&self, endpoint_id: &str) {
        let peer = crate::driver::peer_name(endpoint_id);
        std::fs::write(self.sys_class_net.path().join(peer), "").unwrap();
    }

    /// Sends a raw body; returns the status and the reply as JSON.
    pub async fn raw(&self, method: &str, body: &str) -> (hyper::StatusCode, serde_json::Value) {
        use http_body_util::BodyExt;
        let request = hyper::Request::post(format!("/{method}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let response = crate::server::handle(&self.driver, request).await;
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            crate::protocol::CONTENT_TYPE
        );
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// Calls a method that must answer 200; returns the reply.
    pub async fn call(&self, method: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, reply) = self.raw(method, &body.to_string()).await;
        assert_eq!(status, 200, "{method}: {reply}");
        reply
    }

    /// Calls a method that must fail; returns the `Err` (IPAM: `Error`) message.
    pub async fn err(&self, method: &str, body: serde_json::Value) -> String {
        let reply = self.call(method, body).await;
        let field = if method.starts_with("IpamDriver.") {
            "Error"
        } else {
            "Err"
        };
        match reply.get(field).and_then(|e| e.as_str()) {
            Some(message) => message.to_string(),
            None => panic!("{method}: expected an Err, got {reply}"),
        }
    }
}
