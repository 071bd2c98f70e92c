//! The Cilium agent as a library: configuration, node addressing, IPAM, endpoints, state
//! persistence and the REST API server. `cilium-agent` and `cilium` are thin binaries over it.

pub mod api_server;
pub mod cidr;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod docker;
pub mod endpoint;
pub mod identity;
pub mod ipam;
pub mod kvstore;
pub mod labels;
pub mod link;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod options;
pub mod policy;
pub mod proxy;
pub mod service;
pub mod state;
pub mod timestamp;
