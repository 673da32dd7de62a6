//! The peer transport: Raft RPCs, forwarded writes and read-index requests between members, over
//! tonic on the peer port (`raftkvpb.Peer`, see `kv-api/proto/raftkvpb/peer.proto`).
//!
//! Layout:
//! - [`Peers`]: one lazily connected channel per peer, the envelope (cluster id, sender) and
//!   the classification of failures; used by openraft's replication and by the node;
//! - [`PeerNetwork`]: openraft's network factory and client over [`Peers`];
//! - [`service`]: the server side, which refuses envelopes from another cluster.
//!
//! Payloads are bincode-encoded openraft types (or [`crate::request::WriteRequest`]s); replies
//! carry `Result<_, _>` so a remote Raft error reaches openraft as the error it was.

pub mod service;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_api::raftkvpb::peer_client::PeerClient;
use kv_api::raftkvpb::PeerRequest;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::RPCTypes;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::typ::{NodeId, PeerNode, TypeConfig};

/// Largest peer message either side sends or accepts. Write batches are capped far below it
/// (`BatchConfig::max_bytes`), and an AppendEntries larger than [`MAX_APPEND_BYTES`] is split.
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// An AppendEntries whose encoding exceeds this is sent again with fewer entries.
pub const MAX_APPEND_BYTES: usize = 16 << 20;

/// How long a replication stream waits before retrying a peer it could not reach. openraft's
/// default (500 ms) would delay a restarted member's catch-up for no benefit on a LAN.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);

/// The peer RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
}

/// Why a peer call failed, classified by what it tells about the request's fate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No connection to the peer could be made: the request did not arrive.
    #[error("member {target:x} not connected: {reason}")]
    NotConnected { target: NodeId, reason: String },
    /// The connection failed during the call: the request may have arrived.
    #[error("member {target:x} unreachable: {reason}")]
    Unreachable { target: NodeId, reason: String },
    /// No answer in time: the request may or may not have been handled.
    #[error("member {target:x} did not answer within {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    /// The peer answered with an error status (e.g. another cluster) or an undecodable reply.
    #[error("member {target:x}: {reason}")]
    Failed { target: NodeId, reason: String },
    /// The member has no known address for the peer.
    #[error("member {0:x} is not in the membership")]
    UnknownMember(NodeId),
}

struct Inner {
    me: NodeId,
    cluster_id: u64,
    /// Peer URLs the channel was made for, and the channel (HTTP/2 multiplexes every call).
    channels: Mutex<HashMap<NodeId, (Vec<String>, Channel)>>,
}

/// The member's view of its peers: channels, envelope, failure classification. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

impl Peers {
    pub fn new(me: NodeId, cluster_id: u64) -> Peers {
        Peers { inner: Arc::new(Inner { me, cluster_id, channels: Mutex::new(HashMap::new()) }) }
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// The channel to `target`, created lazily (openraft asks for clients often and must never
    /// wait on a connect here); replaced when the member's URLs changed.
    fn channel(&self, target: NodeId, node: &PeerNode) -> Result<Channel, PeerError> {
        let mut map = self.inner.channels.lock();
        if let Some((urls, ch)) = map.get(&target) {
            if *urls == node.peer_urls {
                return Ok(ch.clone());
            }
        }
        let url = node.peer_urls.first().ok_or(PeerError::UnknownMember(target))?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| PeerError::Failed { target, reason: format!("bad peer URL {url:?}: {e}") })?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let ch = endpoint.connect_lazy();
        map.insert(target, (node.peer_urls.clone(), ch.clone()));
        Ok(ch)
    }

    /// Calls `rpc` on `target` with `payload`, bounded by `timeout`; returns the reply payload.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        node: &PeerNode,
        rpc: Rpc,
        payload: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let bytes = bincode::serialize(payload).map_err(|e| PeerError::Failed { target, reason: e.to_string() })?;
        self.call_raw(target, node, rpc, bytes, timeout).await
    }

    async fn call_raw<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        node: &PeerNode,
        rpc: Rpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let channel = self.channel(target, node)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let req = PeerRequest { cluster_id: self.inner.cluster_id, from: self.inner.me, payload };
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(req).await,
                Rpc::Vote => client.vote(req).await,
                Rpc::InstallSnapshot => client.install_snapshot(req).await,
                Rpc::Forward => client.forward(req).await,
                Rpc::ReadIndex => client.read_index(req).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(PeerError::Timeout { target, timeout }),
            Ok(Err(status)) => return Err(classify(target, status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        bincode::deserialize(&reply.payload)
            .map_err(|e| PeerError::Failed { target, reason: format!("undecodable reply: {e}") })
    }
}

/// Unavailable is what tonic reports when it cannot connect (the request never left) or the
/// connection broke (it may have arrived); every other code is an answer from the peer.
fn classify(target: NodeId, status: tonic::Status) -> PeerError {
    let reason = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        _ if kv_api::error::never_reached(&status) => PeerError::NotConnected { target, reason },
        Code::Unavailable => PeerError::Unreachable { target, reason },
        _ => PeerError::Failed { target, reason },
    }
}

/// openraft's network factory over [`Peers`].
#[derive(Clone)]
pub struct PeerNetwork {
    pub peers: Peers,
}

/// openraft's client of one peer.
pub struct PeerClientHandle {
    peers: Peers,
    target: NodeId,
    node: PeerNode,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClientHandle;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        PeerClientHandle { peers: self.peers.clone(), target, node: node.clone() }
    }
}

impl PeerClientHandle {
    /// One openraft RPC: the reply is the remote `Result`, relayed as `RemoteError` on error.
    async fn rpc<Resp, E>(
        &self,
        rpc: Rpc,
        action: RPCTypes,
        payload: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let reply: Result<Resp, RaftError<NodeId, E>> =
            self.peers.call_raw(self.target, &self.node, rpc, payload, timeout).await.map_err(|e| match e {
                PeerError::NotConnected { .. } | PeerError::Unreachable { .. } | PeerError::UnknownMember(_) => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                PeerError::Timeout { .. } => {
                    RPCError::Timeout(Timeout { action, id: self.peers.inner.me, target: self.target, timeout })
                }
                PeerError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialization of openraft types cannot fail")
}

impl RaftNetwork<TypeConfig> for PeerClientHandle {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let payload = encode(&rpc);
        if payload.len() > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            // Ask openraft to resend with proportionally fewer entries.
            let n = rpc.entries.len() as u64;
            let hint = (n * MAX_APPEND_BYTES as u64 / payload.len() as u64).clamp(1, n - 1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        self.rpc(Rpc::AppendEntries, RPCTypes::AppendEntries, payload, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        let payload = encode(&rpc);
        self.rpc(Rpc::InstallSnapshot, RPCTypes::InstallSnapshot, payload, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        let payload = encode(&rpc);
        self.rpc(Rpc::Vote, RPCTypes::Vote, payload, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}
