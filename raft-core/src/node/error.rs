//! How node operations fail: an etcd outcome for the client, or a member that can no longer
//! serve; and why a leader refused a follower's request.

use kv_api::EtcdError;
use serde::{Deserialize, Serialize};

/// Failure of a node operation: an expected etcd outcome, or a node that can no longer serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Storage failed or Raft stopped: the node is dead and must not serve.
    #[error("fatal: {0}")]
    Fatal(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<NodeError> for EtcdError {
    fn from(e: NodeError) -> EtcdError {
        match e {
            NodeError::Etcd(e) => e,
            NodeError::Fatal(_) => EtcdError::ServerStopped,
            NodeError::Config(m) => EtcdError::Other(m),
        }
    }
}

/// Why the leader refused a write or a read-index request, as it travels back to a follower.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// This member is not the leader and nothing was proposed: safe to send elsewhere.
    NotLeader,
    /// The leader could not confirm its leadership with a quorum this round (a slow or lost
    /// heartbeat); nothing happened, a read may ask again.
    Unconfirmed,
    /// The request failed with an etcd error (its outcome is as that error says).
    Etcd(EtcdError),
}

pub(super) fn fatal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Fatal(e.to_string())
}
