//! Docker libnetwork plugin requests: a sequence of `POST /<Method>` calls with fuzzed bodies
//! through `cilium_docker::server::handle` (docker-libnetwork/src/server.rs), the dispatch by
//! method that decodes each body into its request type (docker-libnetwork/src/protocol.rs)
//! and runs the `NetworkDriver`/`IpamDriver` call (docker-libnetwork/src/driver.rs) against
//! an in-process fake agent, a state directory and a fake `/sys/class/net`. Every reply must
//! be the protocol's JSON with its content type.
//!
//! Input: one byte choosing the agent (its node addressing and whether its calls fail), then
//! requests, one per line: the method name, a space, the JSON body. State (networks,
//! endpoints, joined sandboxes) is fresh for every input and carries over between its lines.
#![no_main]

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use cilium_api::models::{
    AddressPair, Endpoint, EndpointChangeRequest, Family, NodeAddressing, NodeAddressingElement,
    PartialDelete,
};
use cilium_api::{ClientError, EndpointId};
use cilium_docker::agent::Agent;
use cilium_docker::driver::{peer_name, Driver};
use cilium_docker::protocol::CONTENT_TYPE;
use cilium_docker::server::handle;
use cilium_docker::state::NetworkStore;
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;

/// Requests per input, at most.
const MAX_REQUESTS: usize = 16;

/// The agent as the driver sees it, answering from fixed data.
#[derive(Debug)]
struct FuzzAgent {
    addressing: NodeAddressing,
    /// The HTTP status every call that can fail fails with, if any.
    fail: Option<u16>,
    sys_class_net: PathBuf,
}

impl FuzzAgent {
    fn check(&self) -> Result<(), ClientError> {
        match self.fail {
            Some(status) => Err(ClientError::Api {
                status,
                message: "injected failure".into(),
            }),
            None => Ok(()),
        }
    }
}

fn element(ip: &str, range: &str) -> NodeAddressingElement {
    NodeAddressingElement {
        enabled: true,
        ip: ip.parse().ok(),
        alloc_range: Some(range.to_string()),
    }
}

impl Agent for FuzzAgent {
    async fn healthz(&self) -> Result<(), ClientError> {
        Ok(())
    }

    async fn addressing(&self) -> Result<NodeAddressing, ClientError> {
        Ok(self.addressing.clone())
    }

    async fn ipam_allocate(
        &self,
        family: Family,
        _owner: &str,
    ) -> Result<AddressPair, ClientError> {
        self.check()?;
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

    async fn ipam_reserve(&self, _ip: IpAddr, _owner: &str) -> Result<(), ClientError> {
        self.check()
    }

    async fn ipam_release(&self, _ip: IpAddr) -> Result<(), ClientError> {
        self.check()
    }

    async fn endpoint_create(
        &self,
        id: &EndpointId,
        request: &EndpointChangeRequest,
    ) -> Result<Endpoint, ClientError> {
        self.check()?;
        // The agent leaves the veth peer in the node's namespace for Docker to move.
        if let (EndpointId::DockerEndpoint(endpoint), Some(peer)) = (id, &request.veth_peer_name) {
            assert_eq!(*peer, peer_name(endpoint));
            assert!(
                !peer.contains('/') && peer.len() <= 15,
                "peer name {peer:?}"
            );
            let _ = fs::write(self.sys_class_net.join(peer), "");
        }
        Ok(serde_json::from_value(serde_json::json!({
            "id": 42,
            "state": "waiting-for-identity",
            "mac": "02:42:0a:0b:00:05",
            "interface-name": "lxc0123",
        }))
        .expect("endpoint"))
    }

    async fn endpoint_delete(
        &self,
        _id: &EndpointId,
    ) -> Result<Option<PartialDelete>, ClientError> {
        self.check()?;
        Ok(None)
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// This process's scratch directory (state dir and fake `/sys/class/net`).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("cilium-fuzz-libnetwork-{}", std::process::id()))
    })
}

fn fresh_dir(path: &Path) {
    let _ = fs::remove_dir_all(path);
    fs::create_dir_all(path).expect("scratch directory");
}

fn agent(selector: u8, sys_class_net: PathBuf) -> FuzzAgent {
    let dual = NodeAddressing {
        ipv4: element("10.11.0.1", "10.11.0.0/16"),
        ipv6: element("fd00:11::1", "fd00:11::/112"),
    };
    let addressing = match selector & 0b11 {
        0 => dual,
        1 => NodeAddressing {
            ipv6: NodeAddressingElement::default(),
            ..dual
        },
        2 => NodeAddressing::default(),
        _ => NodeAddressing {
            ipv4: element("10.11.0.1", "10.11.0.0"),
            ipv6: element("fd00:11::1", "fd00:11::/129"),
        },
    };
    let fail = match (selector >> 2) & 0b11 {
        0 | 1 => None,
        2 => Some(404),
        _ => Some(500),
    };
    FuzzAgent {
        addressing,
        fail,
        sys_class_net,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let state = scratch().join("state");
    let sys_class_net = scratch().join("sys-class-net");
    fresh_dir(&state);
    fresh_dir(&sys_class_net);
    let networks = NetworkStore::open(&state).expect("network store");
    let driver = Driver::new(agent(selector, sys_class_net.clone()), networks)
        .with_sys_class_net(&sys_class_net);
    if selector & 0x80 == 0 {
        // The addressing read at start-up; otherwise the first request reads it.
        let _ = runtime().block_on(driver.refresh_addressing());
    }

    for line in rest.split(|&b| b == b'\n').take(MAX_REQUESTS) {
        let (method, body) = match line.iter().position(|&b| b == b' ') {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &b""[..]),
        };
        let method = String::from_utf8_lossy(method);
        // Docker sends the method as the path; one the URI parser refuses never arrives.
        let Ok(request) = hyper::Request::post(format!("/{method}"))
            .body(Full::new(Bytes::copy_from_slice(body)))
        else {
            continue;
        };
        let response = runtime().block_on(handle(&driver, request));
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            CONTENT_TYPE,
            "content type"
        );
        let status = response.status().as_u16();
        assert!(matches!(status, 200 | 404 | 405), "status {status}");
        let reply = runtime()
            .block_on(response.into_body().collect())
            .expect("reply body")
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&reply)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {reply:?}"));
        assert!(value.is_object(), "reply is not a JSON object: {value}");
    }
});
