//! Security identities (DESIGN §5): the numeric id of a sorted set of identity-relevant
//! labels. Reserved identities (1 `reserved:host`, 2 `reserved:world`, 5 `reserved:init`; room
//! for more below
//! 256) always exist and are never stored. Cluster identities (256..=65535) are allocated in
//! the kvstore so every node agrees on them (layout in [`keys`]). Local identities (from
//! 1<<24, for CIDR prefixes) live in this node's memory only.

mod allocator;
pub mod keys;
#[cfg(test)]
mod tests;

use crate::kvstore::KvstoreError;
use crate::labels::{Label, LabelSet, LabelSource};

pub use allocator::IdentityAllocator;

/// The host the agent runs on.
pub const HOST: u32 = 1;
/// Everything outside the cluster.
pub const WORLD: u32 = 2;
/// An endpoint whose labels are not known yet (a Docker container before the agent has read
/// its labels): policy is enforced on it in both directions unless enforcement is `never`, and
/// no rule allows it anything unless a rule selects `reserved:init` itself.
pub const INIT: u32 = 5;
/// The first id allocated cluster-wide.
pub const MIN_CLUSTER: u32 = 256;
/// The last id allocated cluster-wide.
pub const MAX_CLUSTER: u32 = 65535;
/// The first local-scope id (CIDR prefixes); never in the kvstore.
pub const MIN_LOCAL: u32 = 1 << 24;

/// The reserved identities: id and the key of their single `reserved:` label.
pub const RESERVED: &[(u32, &str)] = &[(HOST, "host"), (WORLD, "world"), (INIT, "init")];

/// A numeric identity and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: u32,
    pub labels: LabelSet,
}

impl Identity {
    /// The API model; `references` is this node's count where it is shown.
    pub fn to_api(&self, references: Option<u32>) -> cilium_api::models::Identity {
        cilium_api::models::Identity {
            id: self.id,
            labels: self.labels.to_strings(),
            references,
        }
    }

    /// The reserved identity `id`, if it is one.
    pub fn reserved(id: u32) -> Option<Identity> {
        RESERVED
            .iter()
            .find(|(r, _)| *r == id)
            .map(|(id, name)| Identity {
                id: *id,
                labels: LabelSet::new(vec![Label::new(LabelSource::Reserved, name, "")]),
            })
    }
}

/// The reserved id whose labels are `labels`.
fn reserved_id(labels: &LabelSet) -> Option<u32> {
    match labels.as_slice() {
        [label] if label.source == LabelSource::Reserved && label.value.is_empty() => RESERVED
            .iter()
            .find(|(_, name)| *name == label.key)
            .map(|(id, _)| *id),
        _ => None,
    }
}

/// Errors of identity allocation.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no free identity: all ids {min}..={max} are in use")]
    Exhausted { min: u32, max: u32 },
    #[error("identity store: {0}")]
    Kvstore(#[from] KvstoreError),
    #[error("corrupt identity data at '{key}': {reason}")]
    Corrupt { key: String, reason: String },
    #[error("identity {0} is not held by this node")]
    UnknownId(u32),
    #[error(
        "cannot take a reference on the identity of [{labels}]: other nodes kept changing it \
         ({attempts} attempts)"
    )]
    Contended { labels: String, attempts: u32 },
    #[error("invalid identity allocator configuration: {0}")]
    Config(String),
}
