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

mod append_stream;
mod call_stream;
pub mod service;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kv_api::raftkvpb::peer_client::PeerClient;
use kv_api::raftkvpb::{CallKind, PeerRequest};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{
    NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RPCTypes};
use openraft_legacy::network_v1::{InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::node::lease::RestartFloor;
use crate::snapshot_data::SnapshotData;
use crate::typ::{LogId, MetricsWatch, NodeId, PeerNode, Snapshot, TypeConfig, Vote};
use tokio::time::Instant;

/// Largest peer message either side sends or accepts. Write batches are capped far below it
/// (`BatchConfig::max_bytes`), and the log reader stops an AppendEntries at the node's
/// `max_append_bytes` of stored entries (one batch at least).
pub const MAX_PEER_MESSAGE: usize = 64 << 20;

/// How often each end of a peer connection pings the other (an HTTP/2 PING), and how long it
/// waits for the answer before closing the connection; both ends, so that neither keeps a dead
/// one.
///
/// A partition that drops packets resets nothing: without pings the connection stays open until
/// TCP gives up, many minutes later. Every stream and call reopened meanwhile goes onto it, and
/// after the heal nothing moves until TCP's next retransmission, whose wait doubles with each
/// try, so a member cut off for long stays cut off for a while after the network is back; and
/// what was queued on the connection, writes a follower forwarded included, arrives then and
/// is carried out long after its client gave up. A closed connection is dialled afresh, which
/// succeeds as soon as the network is back (`connect_timeout` bounds each try).
///
/// A member that cannot answer a ping within the timeout has long missed its election timeout.
pub const PEER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// See [`PEER_KEEPALIVE_INTERVAL`].
pub const PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a replication stream waits before retrying a peer it could not reach. openraft's
/// default (500 ms) would delay a restarted member's catch-up for no benefit on a LAN.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes of snapshot data per InstallSnapshot RPC when openraft does not say.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Failed snapshot chunks in a row before a transfer gives up (openraft's replication then
/// starts a new one after its backoff).
const SNAPSHOT_CHUNK_TRIES: u32 = 5;

/// Pause before sending a failed snapshot chunk again.
const SNAPSHOT_CHUNK_RETRY: Duration = Duration::from_millis(50);

/// How long the last chunk of a snapshot of `size` bytes may take: the receiver answers it
/// only once it has stored and installed the whole snapshot, at disk speed. A bound for a
/// receiver that hangs, not an estimate (docs/operations.md has the measured rates).
fn install_allowance(size: u64) -> Duration {
    const BYTES_PER_SEC: u64 = 8 << 20;
    Duration::from_secs(30) + Duration::from_millis(size.saturating_mul(1000) / BYTES_PER_SEC)
}

/// A peer's recent receipt stamps in one term and one life of the peer, oldest first, each with
/// when its answer came back to this leader.
#[derive(Debug, Default)]
struct PeerStamps {
    term: u64,
    epoch: u64,
    stamps: VecDeque<(u64, Instant)>,
}

/// A member's receipt stamp: microseconds since it started, in the epoch of that start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: u64,
    pub us: u64,
}

/// What a leader echoes to a follower: one of its stamps, and the leader's applied index.
#[derive(Clone, Copy, Debug)]
struct Echo {
    stamp: Stamp,
    applied_index: u64,
}

/// Reads the last log id the state machine applied.
pub type AppliedFn = Box<dyn Fn() -> Option<LogId> + Send + Sync>;

/// Receipt stamps kept per peer until a confirmation covers them (a few heartbeats' worth).
const MAX_STAMPS: usize = 64;

/// The peer RPCs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
    InstallSnapshot,
    Forward,
    ReadIndex,
    Lease,
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
    /// As leader: per peer, the term and send time of the newest AppendEntries it accepted.
    acks: Mutex<HashMap<NodeId, (u64, Instant)>>,
    /// As leader: each peer's recent receipt stamps (see `echo_us` in peer.proto).
    receipts: Mutex<HashMap<NodeId, PeerStamps>>,
    /// This member's Raft metrics (for the voter set), once Raft runs.
    metrics: Mutex<Option<MetricsWatch>>,
    /// What this member's state machine has applied, read at the moment of asking.
    applied: Mutex<Option<AppliedFn>>,
    /// What this member must apply before it serves reads as a leader restored at startup; set
    /// once, before Raft starts, and the one record of it.
    restart_floor: RestartFloor,
    /// The Calls stream to each peer (forwarded writes, read-index and lease questions).
    calls: Mutex<HashMap<NodeId, Arc<call_stream::CallConn>>>,
}

/// The member's view of its peers: channels, envelope, failure classification. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

impl Peers {
    /// The peers of member `me`, which must apply `restart_floor` before it serves reads as a
    /// leader restored at startup (fixed for the life of the process).
    pub(crate) fn new(me: NodeId, cluster_id: u64, restart_floor: RestartFloor) -> Peers {
        Peers {
            inner: Arc::new(Inner {
                me,
                cluster_id,
                channels: Mutex::new(HashMap::new()),
                acks: Mutex::new(HashMap::new()),
                receipts: Mutex::new(HashMap::new()),
                metrics: Mutex::new(None),
                applied: Mutex::new(None),
                restart_floor,
                calls: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Lets [`Peers::confirmed_at`] see the voter set, and echoes carry the applied index.
    pub fn watch_metrics(&self, metrics: MetricsWatch, applied: AppliedFn) {
        *self.inner.metrics.lock() = Some(metrics);
        *self.inner.applied.lock() = Some(applied);
    }

    /// What this member must apply before it serves reads as a leader restored at startup.
    pub(crate) fn restart_floor(&self) -> RestartFloor {
        self.inner.restart_floor
    }

    /// As leader of `term`: when the newest AppendEntries that a quorum of voters (this member
    /// included) accepted was sent. Every write acknowledged before then is within this
    /// leader's commit index, since no other leader could have committed anything by then.
    pub fn confirmed_at(&self, term: u64) -> Option<Instant> {
        self.quorum_sent_at(term, None)
    }

    /// When the newest AppendEntries was sent that, together with this member and `also` (a
    /// voter whose acceptance is counted separately), a quorum of voters accepted.
    fn quorum_sent_at(&self, term: u64, also: Option<NodeId>) -> Option<Instant> {
        let voters: Vec<NodeId> = {
            let metrics = self.inner.metrics.lock();
            let m = metrics.as_ref()?.borrow_watched();
            m.membership_config.membership().voter_ids().collect()
        };
        let me = self.inner.me;
        let counted = |v: &NodeId| *v == me || Some(*v) == also;
        let acks = self.inner.acks.lock();
        let mut times: Vec<Instant> = voters
            .iter()
            .filter(|v| !counted(v))
            .filter_map(|v| acks.get(v).filter(|(t, _)| *t == term).map(|(_, sent)| *sent))
            .collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        let others_needed = (voters.len() / 2 + 1).saturating_sub(voters.iter().filter(|v| counted(v)).count());
        match others_needed {
            0 => Some(Instant::now()),
            n => times.get(n - 1).copied(),
        }
    }

    fn record_ack(&self, target: NodeId, term: u64, sent: Instant, receipt: Option<Stamp>) {
        let mut acks = self.inner.acks.lock();
        let e = acks.entry(target).or_insert((term, sent));
        if (term, sent) > *e {
            *e = (term, sent);
        }
        if let Some(Stamp { epoch, us }) = receipt {
            let mut receipts = self.inner.receipts.lock();
            let peer = receipts.entry(target).or_default();
            if (peer.term, peer.epoch) != (term, epoch) {
                *peer = PeerStamps { term, epoch, stamps: VecDeque::new() };
            }
            if peer.stamps.back().is_none_or(|(s, _)| *s < us) {
                peer.stamps.push_back((us, Instant::now()));
            }
            if peer.stamps.len() > MAX_STAMPS {
                peer.stamps.pop_front();
            }
        }
    }

    /// The receipt stamp of `target` to echo in an AppendEntries of `term`, with the index
    /// this leader has applied: its newest stamp whose answer came back before the moment a
    /// quorum confirmed this leader, counting `target` itself, which records the echo only if it
    /// accepts the message carrying it (sent after every answer so far). In a 3-member cluster
    /// that is the newest stamp. None until this leader has applied an entry of its own term
    /// (until then what earlier leaders committed may be missing) and, if it was restored as
    /// leader at startup, its log as of then (what it acknowledged before: [`RestartFloor`]).
    fn echo_for(&self, target: NodeId, term: u64) -> Option<Echo> {
        let applied = (*self.inner.applied.lock().as_ref()?)()?;
        if applied.leader_id.term != term || !self.restart_floor().covers(term, applied.index) {
            return None;
        }
        let confirmed = self.quorum_sent_at(term, Some(target))?;
        let mut receipts = self.inner.receipts.lock();
        let peer = receipts.get_mut(&target).filter(|p| p.term == term)?;
        let newest = peer.stamps.iter().rposition(|(_, back)| *back <= confirmed)?;
        // Older stamps can never be the answer again.
        peer.stamps.drain(..newest);
        Some(Echo { stamp: Stamp { epoch: peer.epoch, us: peer.stamps[0].0 }, applied_index: applied.index })
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
            .http2_keep_alive_interval(PEER_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(PEER_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
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
        Ok(self.call_raw(target, node, rpc, bytes, None, timeout).await?.0)
    }

    async fn call_raw<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        node: &PeerNode,
        rpc: Rpc,
        payload: Vec<u8>,
        echo: Option<Echo>,
        timeout: Duration,
    ) -> Result<(Resp, Option<Stamp>), PeerError> {
        let streamed = match rpc {
            Rpc::Forward => Some(CallKind::Forward),
            Rpc::ReadIndex => Some(CallKind::ReadIndex),
            Rpc::Lease => Some(CallKind::Lease),
            _ => None,
        };
        if let Some(kind) = streamed {
            let reply = self.call_streamed(target, node, kind, payload, timeout).await?;
            let resp = crate::codec::decode(&reply.payload)
                .map_err(|e| PeerError::Failed { target, reason: format!("undecodable reply: {e}") })?;
            return Ok((resp, None));
        }
        let channel = self.channel(target, node)?;
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let req = PeerRequest {
            cluster_id: self.inner.cluster_id,
            from: self.inner.me,
            payload,
            echo_us: echo.map(|e| e.stamp.us),
            echo_applied_index: echo.map(|e| e.applied_index),
            echo_epoch: echo.map(|e| e.stamp.epoch),
            ..Default::default()
        };
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(req).await,
                Rpc::Vote => client.vote(req).await,
                Rpc::PreVote => client.pre_vote(req).await,
                Rpc::TransferLeader => client.transfer_leader(req).await,
                Rpc::InstallSnapshot => client.install_snapshot(req).await,
                Rpc::Forward | Rpc::ReadIndex | Rpc::Lease => {
                    Err(tonic::Status::internal("raftkv: a call of the Calls stream sent alone"))
                }
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(PeerError::Timeout { target, timeout }),
            Ok(Err(status)) => return Err(classify(target, status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let resp = crate::codec::decode(&reply.payload)
            .map_err(|e| PeerError::Failed { target, reason: format!("undecodable reply: {e}") })?;
        let stamp = reply.receipt_us.zip(reply.receipt_epoch).map(|(us, epoch)| Stamp { epoch, us });
        Ok((resp, stamp))
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
    /// The AppendEntries stream to the peer, kept open across replication sessions.
    append: Option<append_stream::AppendConn>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClientHandle;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        PeerClientHandle { peers: self.peers.clone(), target, node: node.clone(), append: None }
    }
}

impl PeerClientHandle {
    /// The openraft error for a failed call of `action`.
    fn rpc_error<E: std::error::Error>(&self, e: PeerError, action: RPCTypes) -> RPCError<TypeConfig, E> {
        match e {
            PeerError::NotConnected { .. } | PeerError::Unreachable { .. } | PeerError::UnknownMember(_) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            PeerError::Timeout { timeout, .. } => {
                RPCError::Timeout(Timeout { action, id: self.peers.inner.me, target: self.target, timeout })
            }
            PeerError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
        }
    }

    /// One openraft RPC: the reply is the remote `Result`. A remote API error is relayed as
    /// `RemoteError`; a remote fatal error (the peer's Raft stopped) as a network failure, which
    /// openraft retries after its backoff.
    async fn rpc<Resp, E>(
        &self,
        rpc: Rpc,
        action: RPCTypes,
        payload: Vec<u8>,
        echo: Option<Echo>,
        option: &RPCOption,
    ) -> Result<(Resp, Option<Stamp>), RPCError<TypeConfig, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl();
        let (reply, receipt_us): (Result<Resp, RaftError<TypeConfig, E>>, _) = self
            .peers
            .call_raw(self.target, &self.node, rpc, payload, echo, timeout)
            .await
            .map_err(|e| self.rpc_error(e, action))?;
        match reply {
            Ok(r) => Ok((r, receipt_us)),
            Err(RaftError::APIError(e)) => {
                Err(RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
            }
            Err(RaftError::Fatal(f)) => Err(RPCError::Network(NetworkError::new(&f))),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialization of openraft types cannot fail")
}

impl RaftNetworkV2<TypeConfig> for PeerClientHandle {
    type SnapshotData = SnapshotData;

    /// Every replication session and heartbeat of this peer on one long-lived stream
    /// ([`append_stream`]).
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<
            openraft::base::BoxStream<'s, Result<openraft::raft::StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        self.stream_session(input, option)
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc);
        let term = rpc.vote.leader_id().term;
        let leading = rpc.vote.is_committed();
        let sent = Instant::now();
        let echo = if leading { self.peers.echo_for(self.target, term) } else { None };
        let (resp, receipt_us) = self.rpc(Rpc::AppendEntries, RPCTypes::AppendEntries, payload, echo, &option).await?;
        // Any answer but a higher vote means the peer still accepts this leader's term.
        if leading && !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.peers.record_ack(self.target, term, sent, receipt_us);
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc);
        Ok(self.rpc(Rpc::Vote, RPCTypes::Vote, payload, None, &option).await?.0)
    }

    /// Asks whether the peer would vote, without it changing its vote or term: a member cut off
    /// from the others cannot force an election on its return.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc);
        Ok(self.rpc(Rpc::PreVote, RPCTypes::Vote, payload, None, &option).await?.0)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&req);
        Ok(self.rpc(Rpc::TransferLeader, RPCTypes::TransferLeader, payload, None, &option).await?.0)
    }

    /// Sends the snapshot in chunks read from its file as they go. Each chunk must arrive within
    /// openraft's snapshot timeout, but the last one is answered only after the receiver
    /// installed the whole snapshot, which takes longer on a large store: it gets
    /// [`install_allowance`]. (openraft's own sender gives every chunk the same timeout, so the
    /// last chunk of a large snapshot timed out and the whole transfer started over.)
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        mut snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let meta = snapshot.meta.clone();
        let storage = |e: std::io::Error| -> StreamingError<TypeConfig> {
            crate::typ::StorageError::read_snapshot(Some(meta.signature()), crate::typ::err_source(&e)).into()
        };
        // Each transfer its own id: the receiver starts over when a new one arrives.
        let transfer = openraft_legacy::network_v1::SnapshotMeta::new(meta.clone(), next_transfer_id());
        let chunk = option.snapshot_chunk_size().unwrap_or(SNAPSHOT_CHUNK);
        let size = snapshot.snapshot.len().map_err(storage)?;
        let started = Instant::now();
        let mut cancel = std::pin::pin!(cancel);
        let (mut offset, mut failures) = (0u64, 0u32);
        loop {
            let data = snapshot.snapshot.read_chunk(offset, chunk).map_err(storage)?;
            let n = data.len() as u64;
            let done = offset + n >= size;
            let req = InstallSnapshotRequest { vote, meta: transfer.clone(), offset, data, done };
            let timeout = if done { install_allowance(size) } else { option.hard_ttl() };
            let sent = tokio::select! {
                closed = &mut cancel => return Err(closed.into()),
                sent = self.install_chunk(req, timeout) => sent,
            };
            match sent {
                Ok(resp) if resp.vote > vote => return Ok(SnapshotResponse::new(resp.vote)),
                Ok(resp) if done => {
                    tracing::info!(
                        target = format_args!("{:x}", self.target),
                        snapshot = %transfer.snapshot_id,
                        bytes = size,
                        "snapshot sent and installed in {:?}",
                        started.elapsed()
                    );
                    return Ok(SnapshotResponse::new(resp.vote));
                }
                Ok(_) => {
                    offset += n;
                    failures = 0;
                }
                Err(RPCError::RemoteError(RemoteError {
                    source: InstallSnapshotError::SnapshotMismatch(m), ..
                })) => {
                    // The receiver lost what it had (it restarted, or took the last chunk
                    // already): from the start.
                    tracing::warn!(%m, "snapshot transfer out of step with the receiver; sending it again");
                    (offset, failures) = (0, 0);
                }
                // Down: openraft's replication backs off and starts again.
                Err(RPCError::Unreachable(e)) => return Err(e.into()),
                Err(e) => {
                    failures += 1;
                    if failures >= SNAPSHOT_CHUNK_TRIES {
                        return Err(match e {
                            RPCError::Timeout(e) => e.into(),
                            RPCError::Network(e) => e.into(),
                            other => NetworkError::new(&other).into(),
                        });
                    }
                    tracing::warn!(error = %e, offset, "snapshot chunk failed; sending it again");
                    tokio::time::sleep(SNAPSHOT_CHUNK_RETRY).await;
                }
            }
        }
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF)))
    }
}

/// A fresh id for one snapshot transfer from this process.
fn next_transfer_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{at:x}-{n}")
}

impl PeerClientHandle {
    /// One InstallSnapshot RPC with its own timeout.
    async fn install_chunk(
        &self,
        req: InstallSnapshotRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<InstallSnapshotResponse<TypeConfig>, RPCError<TypeConfig, InstallSnapshotError>> {
        let payload = encode(&req);
        let option = RPCOption::new(timeout);
        Ok(self.rpc(Rpc::InstallSnapshot, RPCTypes::InstallSnapshot, payload, None, &option).await?.0)
    }
}
