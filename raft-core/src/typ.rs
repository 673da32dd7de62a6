//! The openraft type configuration, declared once, and short aliases for its types so no other
//! file spells `<TypeConfig as RaftTypeConfig>::...`.

use crate::request::{RequestBatch, ResponseBatch};

/// openraft's `Node`: what a member needs to reach another (its peer URLs). A member's name and
/// client URLs are published later through a Raft entry (see [`crate::request::MemberAttrs`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerNode {
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// raftkv's Raft types: one entry carries a batch of client write requests.
    pub TypeConfig:
        D = RequestBatch,
        R = ResponseBatch,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_data::SnapshotData,
        AsyncRuntime = crate::rt::Runtime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, PeerNode>;
pub type LogFlushed = openraft::storage::LogFlushed<TypeConfig>;
