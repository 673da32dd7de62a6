//! Raft transport between members.
//!
//! A one-member cluster never sends a Raft RPC: openraft commits with its own vote and confirms
//! leadership without a round trip. The peer transport over tonic (AppendEntries, Vote, snapshot
//! streaming, Forward, ReadIndex) comes with multi-member clusters; until then a member started
//! with peers is refused at startup by the server's configuration check, and this factory
//! reports every peer as unreachable should openraft ever ask.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

use crate::typ::{NodeId, PeerNode, TypeConfig};

/// The error a peer RPC reports while no transport exists.
#[derive(Debug, thiserror::Error)]
#[error("no peer transport to member {0:x}: this build serves one-member clusters")]
pub struct NoTransport(NodeId);

/// Factory of peer clients.
#[derive(Clone, Debug, Default)]
pub struct LocalOnly;

/// A peer client that cannot reach anyone.
pub struct Unconnected(NodeId);

impl RaftNetworkFactory<TypeConfig> for LocalOnly {
    type Network = Unconnected;

    async fn new_client(&mut self, target: NodeId, _node: &PeerNode) -> Self::Network {
        Unconnected(target)
    }
}

impl Unconnected {
    fn err<E: std::error::Error>(&self) -> RPCError<NodeId, PeerNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.0)))
    }
}

impl RaftNetwork<TypeConfig> for Unconnected {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        Err(self.err())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(self.err())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        Err(self.err())
    }
}
