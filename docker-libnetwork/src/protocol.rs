//! The libnetwork wire format: request and reply bodies of the remote `NetworkDriver` and
//! `IpamDriver` APIs, field names as Docker spells them. Requests ignore unknown fields
//! because Docker adds fields across versions; `null` is accepted wherever Go may send a nil
//! map or slice.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Content type of every reply.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// `Options["RequestAddressType"]` of the gateway `RequestAddress` call.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Its value for the network's gateway.
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";
/// `CreateNetwork` option holding the driver options (`docker network create -o`).
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";
/// Driver option carrying the MTU.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";

/// `RouteType` of a route to an on-link destination.
pub const ROUTE_CONNECTED: u8 = 1;

/// `{}`.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Empty {}

/// The failure reply libnetwork reads: `{"Err": "..."}` for the network driver and the plugin
/// handshake, `{"Error": "..."}` for the IPAM driver (libnetwork's remote IPAM client decodes
/// that field and would take a reply with only `Err` for a success).
pub fn error_reply_body(method: &str, message: &str) -> Vec<u8> {
    let field = if method.starts_with("IpamDriver.") {
        "Error"
    } else {
        "Err"
    };
    serde_json::to_vec(&serde_json::json!({ field: message })).unwrap_or_default()
}

#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: &'static [&'static str],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkCapabilities {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

/// One entry of `IPv4Data`/`IPv6Data`: what the IPAM driver handed out for the network.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamData {
    #[serde(default)]
    pub pool: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(default)]
    pub options: Option<HashMap<String, Value>>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// `DeleteNetwork`.
#[derive(Debug, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// The addresses Docker's IPAM driver gave the endpoint (`ip/prefix`, empty when absent).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterface {
    #[serde(default)]
    pub address: String,
    #[serde(rename = "AddressIPv6", default)]
    pub address_ipv6: String,
    #[serde(default)]
    pub mac_address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub interface: Option<EndpointInterface>,
}

/// What the driver adds to the endpoint's interface; only what Docker did not supply.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    pub interface: InterfaceReply,
}

/// `DeleteEndpoint`, `EndpointOperInfo`, `Leave`.
#[derive(Debug, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Serialize)]
pub struct OperInfoResponse {
    #[serde(rename = "Value")]
    pub value: Empty,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(default)]
    pub sandbox_key: String,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The host-side name of the link Docker moves into the sandbox.
    pub src_name: String,
    /// Docker renames it `<DstPrefix><N>` inside the sandbox.
    pub dst_prefix: &'static str,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StaticRoute {
    pub destination: String,
    pub route_type: u8,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "String::is_empty")]
    pub gateway_ipv6: String,
    pub static_routes: Vec<StaticRoute>,
    pub disable_gateway_service: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolRequest {
    #[serde(default)]
    pub address_space: String,
    #[serde(default)]
    pub pool: String,
    #[serde(default)]
    pub sub_pool: String,
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: &'static str,
    pub pool: String,
    pub data: HashMap<String, String>,
}

/// `ReleasePool`.
#[derive(Debug, Deserialize)]
pub struct PoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `RequestAddress` and `ReleaseAddress`; `Address` is a bare IP (or empty).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    /// `ip/32` or `ip/128`.
    pub address: String,
    pub data: HashMap<String, String>,
}
