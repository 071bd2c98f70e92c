use serde_json::json;

use super::*;
use crate::fake::{FakeAgent, Harness, PEER_MAC};

/// A Docker endpoint id (64 hex characters).
const EP: &str = "4f1c0ad9e2b34c8fa0d1e2f3a4b5c6d7e8f90123456789abcdef0123456789ab";
const NET: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";

fn create_network_body(id: &str, v4: &[&str], v6: &[&str], mtu: Option<Value>) -> Value {
    let data = |pools: &[&str]| -> Vec<Value> {
        pools
            .iter()
            .map(|p| json!({"AddressSpace": "CiliumLocal", "Pool": p, "AuxAddresses": null}))
            .collect()
    };
    let mut generic = json!({});
    if let Some(mtu) = mtu {
        generic[MTU_OPTION] = mtu;
    }
    json!({
        "NetworkID": id,
        "Options": {"com.docker.network.enable_ipv6": !v6.is_empty(), GENERIC_OPTIONS: generic},
        "IPv4Data": data(v4),
        "IPv6Data": if v6.is_empty() { Value::Null } else { json!(data(v6)) },
    })
}

async fn with_network(agent: FakeAgent, v6: bool) -> Harness {
    let h = Harness::new(agent);
    let v6_pools: &[&str] = if v6 { &["fd00:11::/112"] } else { &[] };
    let body = create_network_body(NET, &["10.11.0.0/16"], v6_pools, None);
    assert_eq!(h.call("NetworkDriver.CreateNetwork", body).await, json!({}));
    h
}

fn endpoint_body(network: &str, endpoint: &str, mac: &str) -> Value {
    json!({
        "NetworkID": network,
        "EndpointID": endpoint,
        "Options": {"com.docker.network.endpoint.exposedports": null},
        "Interface": {
            "Address": "10.11.0.5/32",
            "AddressIPv6": "fd00:11::5/128",
            "MacAddress": mac,
        },
    })
}

#[test]
fn peer_names_fit_in_a_link_name() {
    assert_eq!(peer_name(EP), "tmp4f1c0ad9e2b");
    assert_eq!(peer_name(EP).len(), 14);
    assert_eq!(peer_name("abc"), "tmpabc");
}

#[test]
fn cidrs_compare_by_value() {
    let a: Cidr = "fd00:11::/112".parse().unwrap();
    assert_eq!("fd00:11:0::/112".parse(), Ok(a));
    assert_ne!("fd00:11::/64".parse(), Ok(a));
    for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", ""] {
        assert_eq!(bad.parse::<Cidr>(), Err(()), "{bad}");
    }
}

#[test]
fn mtu_option_string_or_number() {
    let opts = |v: Value| -> HashMap<String, Value> {
        serde_json::from_value(json!({GENERIC_OPTIONS: {MTU_OPTION: v}})).unwrap()
    };
    assert_eq!(network_mtu(None).unwrap(), None);
    assert_eq!(network_mtu(Some(&HashMap::new())).unwrap(), None);
    assert_eq!(network_mtu(Some(&opts(json!("1450")))).unwrap(), Some(1450));
    assert_eq!(network_mtu(Some(&opts(json!(9000)))).unwrap(), Some(9000));
    for bad in [json!("big"), json!(20), json!(70000), json!(true)] {
        assert!(network_mtu(Some(&opts(bad.clone()))).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn handshake_and_capabilities() {
    let h = Harness::new(FakeAgent::dual_stack());
    assert_eq!(
        h.call("Plugin.Activate", Value::Null).await,
        json!({"Implements": ["NetworkDriver", "IpamDriver"]})
    );
    assert_eq!(
        h.call("NetworkDriver.GetCapabilities", Value::Null).await,
        json!({"Scope": "local", "ConnectivityScope": "local"})
    );
    assert_eq!(
        h.call("IpamDriver.GetCapabilities", Value::Null).await,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
    );
    assert_eq!(
        h.call("IpamDriver.GetDefaultAddressSpaces", Value::Null)
            .await,
        json!({
            "LocalDefaultAddressSpace": "CiliumLocal",
            "GlobalDefaultAddressSpace": "CiliumGlobal",
        })
    );
    assert!(h.agent().calls().is_empty());
}

#[tokio::test]
async fn request_pool_answers_the_agent_range() {
    let h = Harness::new(FakeAgent::dual_stack());
    let v4 = json!({
        "AddressSpace": "CiliumLocal", "Pool": "", "SubPool": "", "Options": {}, "V6": false,
    });
    let first = h.call("IpamDriver.RequestPool", v4.clone()).await;
    assert_eq!(
        first,
        json!({"PoolID": "CiliumPoolv4", "Pool": "10.11.0.0/16", "Data": {}})
    );
    assert_eq!(h.call("IpamDriver.RequestPool", v4).await, first);
    let explicit = json!({"Pool": "10.11.0.0/16", "Options": null});
    assert_eq!(h.call("IpamDriver.RequestPool", explicit).await, first);

    let v6 = json!({"AddressSpace": "CiliumLocal", "Pool": "fd00:11:0::/112", "V6": true});
    assert_eq!(
        h.call("IpamDriver.RequestPool", v6).await,
        json!({"PoolID": "CiliumPoolv6", "Pool": "fd00:11::/112", "Data": {}})
    );
    // The node addressing is read once and cached.
    assert_eq!(h.agent().calls(), ["config"]);
}

#[tokio::test]
async fn request_pool_refusals() {
    let h = Harness::new(FakeAgent::ipv4_only());
    let err = h
        .err("IpamDriver.RequestPool", json!({"Pool": "192.168.0.0/24"}))
        .await;
    assert_eq!(
        err,
        "requested pool 192.168.0.0/24 is not the agent's IPv4 range 10.11.0.0/16"
    );
    let err = h
        .err("IpamDriver.RequestPool", json!({"SubPool": "10.11.1.0/24"}))
        .await;
    assert!(err.contains("sub-pools are not supported"), "{err}");
    let err = h.err("IpamDriver.RequestPool", json!({"V6": true})).await;
    assert_eq!(
        err,
        "the agent has no IPv6 allocation range (IPv6 disabled)"
    );
}

#[tokio::test]
async fn addressing_is_reread_after_a_failed_read() {
    let h = Harness::new(FakeAgent::dual_stack());
    h.agent().fail("config", 500, "agent starting");
    let err = h.err("IpamDriver.RequestPool", json!({})).await;
    assert!(
        err.starts_with("cilium-agent: read the node addressing: agent starting"),
        "{err}"
    );
    h.call("IpamDriver.RequestPool", json!({})).await;
    h.call("IpamDriver.RequestPool", json!({})).await;
    assert_eq!(h.agent().calls(), ["config", "config"]);
}

#[tokio::test]
async fn release_pool() {
    let h = Harness::new(FakeAgent::dual_stack());
    for id in [POOL_V4, POOL_V6] {
        assert_eq!(
            h.call("IpamDriver.ReleasePool", json!({"PoolID": id}))
                .await,
            json!({})
        );
    }
    let err = h
        .err("IpamDriver.ReleasePool", json!({"PoolID": "other"}))
        .await;
    assert_eq!(
        err,
        "unknown pool other (expected CiliumPoolv4 or CiliumPoolv6)"
    );
}

#[tokio::test]
async fn gateway_request_returns_the_router_without_allocating() {
    let h = Harness::new(FakeAgent::dual_stack());
    let gateway = |pool: &str, address: &str| {
        let options = json!({REQUEST_ADDRESS_TYPE: GATEWAY_ADDRESS_TYPE});
        json!({"PoolID": pool, "Address": address, "Options": options})
    };
    assert_eq!(
        h.call("IpamDriver.RequestAddress", gateway(POOL_V4, ""))
            .await,
        json!({"Address": "10.11.0.1/32", "Data": {}})
    );
    assert_eq!(
        h.call("IpamDriver.RequestAddress", gateway(POOL_V6, "fd00:11::1"))
            .await,
        json!({"Address": "fd00:11::1/128", "Data": {}})
    );
    let err = h
        .err("IpamDriver.RequestAddress", gateway(POOL_V4, "10.11.0.254"))
        .await;
    assert!(err.contains("router 10.11.0.1, not 10.11.0.254"), "{err}");
    assert_eq!(h.agent().calls(), ["config"]);
}

#[tokio::test]
async fn request_address_allocates_or_reserves() {
    let h = Harness::new(FakeAgent::dual_stack());
    assert_eq!(
        h.call(
            "IpamDriver.RequestAddress",
            json!({"PoolID": POOL_V4, "Address": "", "Options": null})
        )
        .await,
        json!({"Address": "10.11.0.5/32", "Data": {}})
    );
    assert_eq!(
        h.call("IpamDriver.RequestAddress", json!({"PoolID": POOL_V6}))
            .await,
        json!({"Address": "fd00:11::5/128", "Data": {}})
    );
    assert_eq!(
        h.call(
            "IpamDriver.RequestAddress",
            json!({"PoolID": POOL_V4, "Address": "10.11.0.9"})
        )
        .await,
        json!({"Address": "10.11.0.9/32", "Data": {}})
    );
    assert_eq!(
        h.agent().calls(),
        [
            "allocate ipv4 docker-ipam",
            "allocate ipv6 docker-ipam",
            "reserve 10.11.0.9 docker-ipam"
        ]
    );

    h.agent().fail(
        "reserve",
        409,
        "address 10.11.0.9 is already allocated (owner: x)",
    );
    let err = h
        .err(
            "IpamDriver.RequestAddress",
            json!({"PoolID": POOL_V4, "Address": "10.11.0.9"}),
        )
        .await;
    assert!(
        err.contains("reserve 10.11.0.9: address 10.11.0.9 is already allocated"),
        "{err}"
    );
    let err = h
        .err("IpamDriver.RequestAddress", json!({"PoolID": "nope"}))
        .await;
    assert!(err.starts_with("unknown pool nope"), "{err}");
    let err = h
        .err(
            "IpamDriver.RequestAddress",
            json!({"PoolID": POOL_V4, "Address": "fd00::1"}),
        )
        .await;
    assert_eq!(err, "invalid IPv4 address 'fd00::1'");
}

#[tokio::test]
async fn release_address() {
    let h = Harness::new(FakeAgent::dual_stack());
    let release = |pool: &str, address: &str| json!({"PoolID": pool, "Address": address});
    assert_eq!(
        h.call("IpamDriver.ReleaseAddress", release(POOL_V4, "10.11.0.1"))
            .await,
        json!({})
    );
    assert_eq!(
        h.call("IpamDriver.ReleaseAddress", release(POOL_V4, "10.11.0.5"))
            .await,
        json!({})
    );
    assert_eq!(
        h.call("IpamDriver.ReleaseAddress", release(POOL_V6, "fd00:11::5"))
            .await,
        json!({})
    );
    assert_eq!(
        h.agent().calls(),
        ["config", "release 10.11.0.5", "release fd00:11::5"]
    );

    h.agent().fail("release", 404, "address not allocated");
    assert_eq!(
        h.call("IpamDriver.ReleaseAddress", release(POOL_V4, "10.11.0.6"))
            .await,
        json!({})
    );
    h.agent().fail("release", 500, "boom");
    let err = h
        .err("IpamDriver.ReleaseAddress", release(POOL_V4, "10.11.0.6"))
        .await;
    assert_eq!(err, "cilium-agent: release 10.11.0.6: boom (HTTP 500)");
    let err = h
        .err("IpamDriver.ReleaseAddress", release("x", "10.11.0.6"))
        .await;
    assert!(err.starts_with("unknown pool x"), "{err}");
}

#[tokio::test]
async fn create_and_delete_network() {
    let h = Harness::new(FakeAgent::dual_stack());
    let body = create_network_body(
        NET,
        &["10.11.0.0/16"],
        &["fd00:11::/112"],
        Some(json!("1450")),
    );
    assert_eq!(
        h.call("NetworkDriver.CreateNetwork", body.clone()).await,
        json!({})
    );
    let record = h.state.path().join(format!("networks/{NET}.json"));
    let saved: NetworkRecord = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        saved,
        NetworkRecord {
            id: NET.into(),
            ipv4: true,
            ipv6: true,
            mtu: Some(1450)
        }
    );
    // Docker may replay a create; the same data is fine, other data is not.
    assert_eq!(h.call("NetworkDriver.CreateNetwork", body).await, json!({}));
    let other = create_network_body(NET, &["10.11.0.0/16"], &[], Some(json!(1450)));
    let err = h.err("NetworkDriver.CreateNetwork", other).await;
    assert_eq!(
        err,
        format!("network {NET} already exists with other settings")
    );

    let delete = json!({"NetworkID": NET});
    assert_eq!(
        h.call("NetworkDriver.DeleteNetwork", delete.clone()).await,
        json!({})
    );
    assert!(!record.exists());
    let err = h.err("NetworkDriver.DeleteNetwork", delete).await;
    assert_eq!(err, format!("unknown network {NET}"));
}

#[tokio::test]
async fn create_network_refusals() {
    let h = Harness::new(FakeAgent::ipv4_only());
    let err = h
        .err(
            "NetworkDriver.CreateNetwork",
            create_network_body("n1", &["172.18.0.0/16"], &[], None),
        )
        .await;
    assert_eq!(
        err,
        "network n1: pool 172.18.0.0/16 is not the agent's IPv4 range 10.11.0.0/16; create the \
         network with --ipam-driver cilium"
    );
    let body = create_network_body("n1", &["10.11.0.0/16"], &["fd00:11::/112"], None);
    let err = h.err("NetworkDriver.CreateNetwork", body).await;
    assert_eq!(
        err,
        "the agent has no IPv6 allocation range (IPv6 disabled)"
    );
    let err = h
        .err(
            "NetworkDriver.CreateNetwork",
            create_network_body("../x", &["10.11.0.0/16"], &[], None),
        )
        .await;
    assert!(err.starts_with("invalid network id '../x'"), "{err}");
    let err = h
        .err(
            "NetworkDriver.CreateNetwork",
            create_network_body("n1", &[], &[], None),
        )
        .await;
    assert_eq!(err, "network n1 has neither an IPv4 nor an IPv6 pool");
    let body = create_network_body("n1", &["10.11.0.0/16"], &[], Some(json!("jumbo")));
    let err = h.err("NetworkDriver.CreateNetwork", body).await;
    assert!(
        err.starts_with("invalid com.docker.network.driver.mtu \"jumbo\""),
        "{err}"
    );
    assert!(std::fs::read_dir(h.state.path().join("networks"))
        .unwrap()
        .next()
        .is_none());
    let err = h
        .err("NetworkDriver.DeleteNetwork", json!({"NetworkID": "../x"}))
        .await;
    assert!(err.starts_with("invalid network id"), "{err}");
}

#[tokio::test]
async fn create_endpoint_asks_the_agent_for_a_peer() {
    let h = Harness::new(FakeAgent::dual_stack());
    let body = create_network_body(
        NET,
        &["10.11.0.0/16"],
        &["fd00:11::/112"],
        Some(json!(1400)),
    );
    h.call("NetworkDriver.CreateNetwork", body).await;

    let reply = h
        .call("NetworkDriver.CreateEndpoint", endpoint_body(NET, EP, ""))
        .await;
    assert_eq!(reply, json!({"Interface": {"MacAddress": PEER_MAC}}));
    let (id, request) = h.agent().created().remove(0);
    assert_eq!(id, EndpointId::DockerEndpoint(EP.into()));
    let expected = EndpointChangeRequest {
        docker_endpoint_id: Some(EP.into()),
        docker_network_id: Some(NET.into()),
        addressing: Some(AddressPair {
            ipv4: "10.11.0.5".parse().ok(),
            ipv6: "fd00:11::5".parse().ok(),
        }),
        mtu: Some(1400),
        veth_peer_name: Some("tmp4f1c0ad9e2b".into()),
        ..EndpointChangeRequest::default()
    };
    assert_eq!(request, expected);
    let wire = serde_json::to_value(&request).unwrap();
    assert_eq!(wire["veth-peer-name"], "tmp4f1c0ad9e2b");

    // A MAC Docker chose goes to the agent and is not echoed back.
    let reply = h
        .call(
            "NetworkDriver.CreateEndpoint",
            endpoint_body(NET, "ep2", "02:42:ac:11:00:02"),
        )
        .await;
    assert_eq!(reply, json!({"Interface": {}}));
    assert_eq!(
        h.agent().created()[1].1.mac.as_deref(),
        Some("02:42:ac:11:00:02")
    );
}

#[tokio::test]
async fn create_endpoint_refusals() {
    let h = with_network(FakeAgent::dual_stack(), true).await;
    let err = h
        .err(
            "NetworkDriver.CreateEndpoint",
            endpoint_body("nonet", EP, ""),
        )
        .await;
    assert_eq!(err, "unknown network nonet");
    let err = h
        .err(
            "NetworkDriver.CreateEndpoint",
            endpoint_body(NET, "../x", ""),
        )
        .await;
    assert!(err.starts_with("invalid endpoint id '../x'"), "{err}");
    let no_address = json!({"NetworkID": NET, "EndpointID": EP, "Interface": null});
    let err = h.err("NetworkDriver.CreateEndpoint", no_address).await;
    assert!(err.contains("Docker supplied no address"), "{err}");
    h.agent().fail("endpoint-create", 409, "endpoint exists");
    let err = h
        .err("NetworkDriver.CreateEndpoint", endpoint_body(NET, EP, ""))
        .await;
    assert_eq!(
        err,
        format!("cilium-agent: create endpoint docker-endpoint:{EP}: endpoint exists (HTTP 409)")
    );
}

#[tokio::test]
async fn delete_endpoint_is_idempotent() {
    let h = with_network(FakeAgent::dual_stack(), true).await;
    let body = json!({"NetworkID": NET, "EndpointID": EP});
    assert_eq!(
        h.call("NetworkDriver.DeleteEndpoint", body.clone()).await,
        json!({})
    );
    h.agent().fail("endpoint-delete", 404, "endpoint not found");
    assert_eq!(
        h.call("NetworkDriver.DeleteEndpoint", body.clone()).await,
        json!({})
    );
    h.agent().fail("endpoint-delete", 500, "netlink busy");
    let err = h.err("NetworkDriver.DeleteEndpoint", body).await;
    assert!(err.ends_with("netlink busy (HTTP 500)"), "{err}");
    let calls = h.agent().calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("endpoint-delete"))
            .count(),
        3
    );
    let err = h
        .err(
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": NET, "EndpointID": "../x"}),
        )
        .await;
    assert!(err.starts_with("invalid endpoint id"), "{err}");
}

#[tokio::test]
async fn join_hands_over_the_peer_and_the_routers() {
    let h = with_network(FakeAgent::dual_stack(), true).await;
    h.make_peer(EP);
    let body = json!({
        "NetworkID": NET,
        "EndpointID": EP,
        "SandboxKey": "/var/run/docker/netns/abc",
        "Options": {},
    });
    assert_eq!(
        h.call("NetworkDriver.Join", body).await,
        json!({
            "InterfaceName": {"SrcName": "tmp4f1c0ad9e2b", "DstPrefix": "eth"},
            "Gateway": "10.11.0.1",
            "GatewayIPv6": "fd00:11::1",
            "StaticRoutes": [
                {"Destination": "10.11.0.1/32", "RouteType": 1},
                {"Destination": "fd00:11::1/128", "RouteType": 1},
            ],
            "DisableGatewayService": true,
        })
    );

    let h = with_network(FakeAgent::dual_stack(), false).await;
    h.make_peer(EP);
    let reply = h
        .call(
            "NetworkDriver.Join",
            json!({"NetworkID": NET, "EndpointID": EP}),
        )
        .await;
    assert_eq!(reply["Gateway"], "10.11.0.1");
    assert_eq!(reply.get("GatewayIPv6"), None);
    assert_eq!(
        reply["StaticRoutes"],
        json!([{"Destination": "10.11.0.1/32", "RouteType": 1}])
    );
}

#[tokio::test]
async fn a_second_endpoint_in_a_sandbox_gets_no_gateway() {
    let h = with_network(FakeAgent::dual_stack(), false).await;
    let join = |ep: &str| json!({"NetworkID": NET, "EndpointID": ep, "SandboxKey": "/sb/1"});
    let (ep1, ep2) = ("e1e1e1e1e1e1e1e1", "e2e2e2e2e2e2e2e2");
    h.make_peer(ep1);
    h.make_peer(ep2);
    assert_eq!(
        h.call("NetworkDriver.Join", join(ep1)).await["Gateway"],
        "10.11.0.1"
    );
    let second = h.call("NetworkDriver.Join", join(ep2)).await;
    assert_eq!(second.get("Gateway"), None, "{second}");
    assert_eq!(second["StaticRoutes"], json!([]), "{second}");
    // Once the first has left, the next one routes again.
    h.call(
        "NetworkDriver.Leave",
        json!({"NetworkID": NET, "EndpointID": ep1}),
    )
    .await;
    h.call(
        "NetworkDriver.Leave",
        json!({"NetworkID": NET, "EndpointID": ep2}),
    )
    .await;
    h.make_peer(ep2);
    assert_eq!(
        h.call("NetworkDriver.Join", join(ep2)).await["Gateway"],
        "10.11.0.1"
    );
}

#[tokio::test]
async fn join_refusals() {
    let h = with_network(FakeAgent::dual_stack(), true).await;
    // No such peer in the real /sys/class/net: already moved by a first Join, or never made.
    let networks = NetworkStore::open(h.state.path()).unwrap();
    let real = Driver::new(FakeAgent::dual_stack(), networks);
    let endpoint = "nosuchpeer1xyz";
    assert!(!std::path::Path::new(SYS_CLASS_NET)
        .join(peer_name(endpoint))
        .exists());
    let req: JoinRequest =
        serde_json::from_value(json!({"NetworkID": NET, "EndpointID": endpoint})).unwrap();
    let err = real.join(req).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("endpoint {endpoint} is already joined or was not created")
    );

    let err = h
        .err(
            "NetworkDriver.Join",
            json!({"NetworkID": "other", "EndpointID": EP}),
        )
        .await;
    assert_eq!(err, "unknown network other");
    let err = h
        .err(
            "NetworkDriver.Join",
            json!({"NetworkID": NET, "EndpointID": "../x"}),
        )
        .await;
    assert!(err.starts_with("invalid endpoint id '../x'"), "{err}");
}

#[tokio::test]
async fn leave_oper_info_and_discovery_are_no_ops() {
    let h = with_network(FakeAgent::dual_stack(), true).await;
    let ep = json!({"NetworkID": NET, "EndpointID": EP});
    assert_eq!(h.call("NetworkDriver.Leave", ep.clone()).await, json!({}));
    assert_eq!(
        h.call("NetworkDriver.EndpointOperInfo", ep).await,
        json!({"Value": {}})
    );
    let discovery = json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.2"}});
    assert_eq!(
        h.call("NetworkDriver.DiscoverNew", discovery.clone()).await,
        json!({})
    );
    assert_eq!(
        h.call("NetworkDriver.DiscoverDelete", discovery).await,
        json!({})
    );
    assert_eq!(h.agent().calls(), ["config"]);
}
