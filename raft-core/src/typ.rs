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
        AsyncRuntime = crate::rt::Runtime,
);

use openraft::type_config::alias;

pub type NodeId = u64;
/// openraft's handle, over the state machine of an engine `E`.
pub type Raft<E> = openraft::Raft<TypeConfig, crate::state_machine::KvStore<E>>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type EntryPayload = alias::EntryPayloadOf<TypeConfig>;
pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, crate::snapshot_data::SnapshotData>;
pub type StorageError = openraft::StorageError<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
pub type IOFlushed = openraft::storage::IOFlushed<TypeConfig>;
/// A watch of openraft's metrics (the runtime's watch type).
pub type MetricsWatch = alias::WatchReceiverOf<TypeConfig, RaftMetrics>;

/// The source of a [`StorageError`], made from any error.
pub fn err_source(e: &(impl std::error::Error + 'static)) -> alias::ErrorSourceOf<TypeConfig> {
    openraft::errors::ErrorSource::from_error(e)
}

/// The id of entry `index`, written by leader `node` in `term`.
pub fn log_id(term: u64, node: NodeId, index: u64) -> LogId {
    LogId::new(alias::CommittedLeaderIdOf::<TypeConfig> { term, node_id: node }, index)
}
