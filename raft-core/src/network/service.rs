//! The server side of the peer transport: hands Raft RPCs to openraft, forwarded writes to the
//! leader's batcher and read-index requests to the leader's quorum check.

use kv_api::raftkvpb::peer_server::Peer;
use kv_api::raftkvpb::{CallKind, PeerReply, PeerRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use crate::engine::Engine;
use crate::network::Stamp;
use crate::node::{IndexKind, LeaseAsk};
use crate::request::WriteRequest;
use crate::typ::TypeConfig;
use crate::Node;

/// The `raftkvpb.Peer` service of one member.
pub struct PeerService<E: Engine> {
    node: Node<E>,
}

impl<E: Engine> PeerService<E> {
    pub fn new(node: Node<E>) -> Self {
        PeerService { node }
    }

    /// Checks the envelope and decodes its payload. An envelope from another cluster is refused:
    /// two clusters whose members share hosts must never exchange Raft messages.
    fn open<T: DeserializeOwned>(&self, req: Request<PeerRequest>) -> Result<T, Status> {
        self.open_envelope(req.into_inner())
    }

    fn open_envelope<T: DeserializeOwned>(&self, req: PeerRequest) -> Result<T, Status> {
        let mine = self.node.cluster_id();
        if req.cluster_id != mine {
            tracing::warn!(
                from = format_args!("{:x}", req.from),
                "refused a peer request from cluster {:x}",
                req.cluster_id
            );
            return Err(Status::failed_precondition(format!(
                "raftkv: peer request from cluster {:x} refused by member {:x} of cluster {mine:x}",
                req.cluster_id,
                self.node.id()
            )));
        }
        crate::codec::decode(&req.payload)
            .map_err(|e| Status::invalid_argument(format!("raftkv: undecodable peer payload: {e}")))
    }
}

fn reply<T: Serialize>(v: &T) -> Result<Response<PeerReply>, Status> {
    let payload = bincode::serialize(v).map_err(|e| Status::internal(format!("raftkv: encoding reply: {e}")))?;
    Ok(Response::new(PeerReply { payload, ..Default::default() }))
}

impl<E: Engine> Clone for PeerService<E> {
    fn clone(&self) -> Self {
        PeerService { node: self.node.clone() }
    }
}

/// The echo a leader's AppendEntries carries (see [`crate::network`]): a stamp of this member's
/// and the leader's applied index.
fn echo_of(r: &PeerRequest) -> Option<(Stamp, u64)> {
    match (r.echo_us, r.echo_applied_index, r.echo_epoch) {
        (Some(us), Some(index), Some(epoch)) => Some((Stamp { epoch, us }, index)),
        _ => None,
    }
}

/// What the answer to one streamed AppendEntries needs from its request.
struct Received {
    term: u64,
    committed_vote: bool,
    echo: Option<(Stamp, u64)>,
    receipt: Stamp,
}

type Replies = std::pin::Pin<Box<dyn futures::Stream<Item = Result<PeerReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<E: Engine> Peer for PeerService<E> {
    type AppendStreamStream = Replies;

    /// The leader's AppendEntries to this member, in order on one stream, answered in order
    /// (openraft pipelines them). A request that cannot be opened ends the stream with its error.
    async fn append_stream(&self, req: Request<Streaming<PeerRequest>>) -> Result<Response<Replies>, Status> {
        use futures::StreamExt;
        let received: Arc<parking_lot::Mutex<VecDeque<Received>>> = Arc::default();
        let refused: Arc<parking_lot::Mutex<Option<Status>>> = Arc::default();
        let (service, queue, refusal) = (self.clone(), received.clone(), refused.clone());
        // openraft's reader of this stream lives until the stream ends, and a member shutting
        // down waits for every peer stream to close: once Raft stops, stop reading.
        let requests = req.into_inner().take_until(self.node.stopped()).scan((), move |(), message| {
            let opened = message.and_then(|m| {
                let echo = echo_of(&m);
                let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = service.open_envelope(m)?;
                Ok((rpc, echo))
            });
            let next = match opened {
                Ok((rpc, echo)) => {
                    queue.lock().push_back(Received {
                        term: rpc.vote.leader_id().term,
                        committed_vote: rpc.vote.is_committed(),
                        echo,
                        receipt: service.node.clock_stamp(),
                    });
                    Some(rpc)
                }
                Err(status) => {
                    *refusal.lock() = Some(status);
                    None
                }
            };
            std::future::ready(next)
        });
        let node = self.node.clone();
        let answers = self.node.raft().stream_append(requests).map(move |answer| {
            let Some(r) = received.lock().pop_front() else {
                return Err(Status::internal("raftkv: an AppendEntries answer without its request"));
            };
            node.note_append_answer(r.term, r.committed_vote, r.echo, &answer);
            let mut out = reply(&answer)?.into_inner();
            out.receipt_us = Some(r.receipt.us);
            out.receipt_epoch = Some(r.receipt.epoch);
            Ok(out)
        });
        // A request refused ends the stream with its status once the answers before it are out.
        let end = futures::stream::once(async move { refused.lock().take() }).filter_map(|s| async move { s.map(Err) });
        Ok(Response::new(Box::pin(answers.chain(end))))
    }

    async fn append_entries(&self, req: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let echo = echo_of(req.get_ref());
        let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = self.open(req)?;
        let term = rpc.vote.leader_id().term;
        let committed_vote = rpc.vote.is_committed();
        let receipt = self.node.clock_stamp();
        let resp = self.node.raft().append_entries(rpc).await;
        // Only an accepted message from an established leader tells how current this member is,
        // and only as of a stamp of ours it echoes: a message delayed in the network or in a
        // paused process says nothing about when it was sent.
        if let (true, Some((stamp, index)), Ok(openraft::raft::AppendEntriesResponse::Success)) =
            (committed_vote, echo, &resp)
        {
            self.node.note_append_entries(term, index, stamp);
        }
        // Any answer but a higher vote means this member still follows that leader.
        if committed_vote
            && matches!(&resp, Ok(r) if !matches!(r, openraft::raft::AppendEntriesResponse::HigherVote(_)))
        {
            self.node.heard_leader();
        }
        let mut out = reply(&resp)?;
        out.get_mut().receipt_us = Some(receipt.us);
        out.get_mut().receipt_epoch = Some(receipt.epoch);
        Ok(out)
    }

    async fn vote(&self, req: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let rpc: openraft::raft::VoteRequest<TypeConfig> = self.open(req)?;
        if self.node.refusing_votes() {
            // No answer counts as no vote: see `Node::refusing_votes`.
            return Err(Status::unavailable(
                "raftkv: member started less than 2 election timeouts ago; not voting yet",
            ));
        }
        reply(&self.node.raft().vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let rpc: openraft::raft::VoteRequest<TypeConfig> = self.open(req)?;
        if self.node.refusing_votes() {
            return Err(Status::unavailable(
                "raftkv: member started less than 2 election timeouts ago; not voting yet",
            ));
        }
        reply(&self.node.raft().pre_vote(rpc).await)
    }

    async fn transfer_leader(&self, req: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        let rpc: openraft::raft::TransferLeaderRequest<TypeConfig> = self.open(req)?;
        let answered =
            self.node.raft().handle_transfer_leader(rpc).await.map_err(openraft::error::RaftError::<TypeConfig>::Fatal);
        reply(&answered)
    }

    async fn install_snapshot(&self, req: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        use openraft_legacy::network_v1::ChunkedSnapshotReceiver;
        let rpc: openraft_legacy::network_v1::InstallSnapshotRequest<TypeConfig> = self.open(req)?;
        // Status reports the member as catching up while the leader streams it.
        let _receiving = self.node.receiving_snapshot();
        reply(&self.node.raft().install_snapshot(rpc).await)
    }

    type CallsStream = Replies;

    /// A follower's calls, each answered with its id as soon as it completes: calls run side by
    /// side, so a slow one (a write waiting for its commit) holds up no other. A request that
    /// cannot be read ends the stream.
    async fn calls(&self, req: Request<Streaming<PeerRequest>>) -> Result<Response<Replies>, Status> {
        use futures::StreamExt;
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<PeerReply, Status>>();
        // Stop reading once Raft stops: a member shutting down waits for every peer stream.
        let mut requests = Box::pin(req.into_inner().take_until(self.node.stopped()));
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let (service, tx) = (service.clone(), tx.clone());
                tokio::spawn(async move {
                    let id = request.call_id;
                    let answer = match request.call() {
                        CallKind::Forward => service.forward(request).await,
                        CallKind::ReadIndex => service.read_index(request).await,
                        CallKind::Lease => service.lease(request).await,
                        CallKind::Unspecified => Err(Status::invalid_argument("raftkv: a call of no known kind")),
                    };
                    let reply = match answer {
                        Ok(reply) => PeerReply { call_id: id, ..reply },
                        Err(status) => PeerReply {
                            call_id: id,
                            error_code: Some(status.code() as i32),
                            error_message: status.message().to_string(),
                            ..Default::default()
                        },
                    };
                    let _ = tx.unbounded_send(Ok(reply));
                });
            }
        });
        Ok(Response::new(Box::pin(rx)))
    }
}

impl<E: Engine> PeerService<E> {
    /// A follower's batch of writes: each goes through the batcher on its own (in order) and
    /// gets its own result.
    async fn forward(&self, req: PeerRequest) -> Result<PeerReply, Status> {
        let writes: Vec<WriteRequest> = self.open_envelope(req)?;
        let results = futures::future::join_all(writes.into_iter().map(|w| self.node.propose(w))).await;
        Ok(reply(&results)?.into_inner())
    }

    async fn read_index(&self, req: PeerRequest) -> Result<PeerReply, Status> {
        let kind: IndexKind = self.open_envelope(req)?;
        Ok(reply(&self.node.read_index_of(kind).await)?.into_inner())
    }

    async fn lease(&self, req: PeerRequest) -> Result<PeerReply, Status> {
        let ask: LeaseAsk = self.open_envelope(req)?;
        Ok(reply(&self.node.answer_lease(ask).await)?.into_inner())
    }
}
