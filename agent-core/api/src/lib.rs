//! The contract between `cilium-agent` and everything that talks to it: the API models
//! (serde, field names as on the wire), endpoint id parsing, and an async client over the
//! agent's unix socket. Plugins and the CLI depend on this crate only.

pub mod client;
pub mod endpoint_id;
pub mod models;
pub mod path;
pub mod server;

pub use client::{Client, ClientError};
pub use endpoint_id::{EndpointId, EndpointIdError};

/// The base path of every API resource.
pub const API_BASE: &str = "/v1";

/// Where the agent listens unless told otherwise (`--socket-path`, `CILIUM_SOCK`).
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/cilium/cilium.sock";

/// Largest request body the agent accepts.
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// IPAM owner of the addresses the Docker IPAM driver reserves: they belong to the driver
/// (released by its `ReleaseAddress`), and the endpoint that uses one never releases it.
pub const DOCKER_IPAM_OWNER: &str = "docker-ipam";
