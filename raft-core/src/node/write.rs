//! The write path: a write goes to the leader (forwarded when this member follows), where the
//! batcher gathers the requests that queue while a proposal is in flight into the next Raft
//! entry.

use kv_api::EtcdError;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::error::fatal;
use super::forward::Forward;
use super::{within, BatchConfig, Node, NodeError, Refusal};
use crate::engine::Engine;
use crate::request::{RequestBatch, WriteRequest, WriteResponse};
use crate::typ::{NodeId, PeerNode, Raft};

pub(super) type Reply = oneshot::Sender<Result<WriteResponse, Refusal>>;

impl<E: Engine> Node<E> {
    /// Proposes one write through the leader and waits for its result, at most
    /// `--request-timeout`. A timeout or "leader changed" means the outcome is unknown: the
    /// write may still commit.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteResponse, NodeError> {
        let deadline = Instant::now() + self.request_timeout;
        match within(deadline, self.route_write(req, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    async fn route_write(&self, req: WriteRequest, deadline: Instant) -> Result<WriteResponse, NodeError> {
        loop {
            let (leader, node) = self.leader(deadline).await?;
            let refusal = if leader == self.id {
                self.propose(req.clone()).await
            } else {
                let (reply, rx) = oneshot::channel();
                let forward = Forward { leader, node, request: req.clone(), deadline, reply };
                self.forwards.send(forward).await.map_err(|_| EtcdError::ServerStopped)?;
                rx.await.map_err(|_| EtcdError::ServerStopped)??
            };
            match refusal {
                Ok(resp) => return Ok(resp),
                Err(Refusal::Etcd(e)) => return Err(e.into()),
                // Nothing was proposed: wait for a different leader and try there.
                Err(Refusal::NotLeader) => self.leader_moved_from(leader, deadline).await?,
                Err(Refusal::Unconfirmed) => return Err(EtcdError::Timeout.into()),
            }
        }
    }

    /// Proposes `req` through this member's batcher; refused unless it leads. Used for local
    /// writes and for writes forwarded by followers.
    pub async fn propose(&self, req: WriteRequest) -> Result<WriteResponse, Refusal> {
        propose_on(&self.writes, req, self.request_timeout).await
    }

    /// The current leader and its address, waiting for one until `deadline`.
    pub(super) async fn leader(&self, deadline: Instant) -> Result<(NodeId, PeerNode), NodeError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(f) = &m.running_state {
                    return Err(fatal(f));
                }
                if let Some(l) = m.current_leader {
                    let node = m.membership_config.membership().get_node(&l).cloned().unwrap_or_default();
                    return Ok((l, node));
                }
            }
            match within(deadline, rx.changed()).await {
                Err(_) => return Err(EtcdError::NoLeader.into()),
                Ok(Err(_)) => return Err(EtcdError::ServerStopped.into()),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits until this member sees a leader other than `old` (or none), at most until
    /// `deadline`.
    pub(super) async fn leader_moved_from(&self, old: NodeId, deadline: Instant) -> Result<(), NodeError> {
        let mut rx = self.raft.metrics();
        let wait = async { rx.wait_until(|m| m.current_leader != Some(old) || m.running_state.is_err()).await.is_ok() };
        match within(deadline, wait).await {
            Err(_) => Err(EtcdError::NoLeader.into()),
            Ok(false) => Err(EtcdError::ServerStopped.into()),
            Ok(true) => Ok(()),
        }
    }
}

/// Proposes `req` through the batcher behind `writes`, waiting at most `timeout` for its result.
pub(super) async fn propose_on(
    writes: &mpsc::Sender<(WriteRequest, Reply)>,
    req: WriteRequest,
    timeout: std::time::Duration,
) -> Result<WriteResponse, Refusal> {
    let (tx, rx) = oneshot::channel();
    let stopped = Refusal::Etcd(EtcdError::ServerStopped);
    writes.send((req, tx)).await.map_err(|_| stopped.clone())?;
    match tokio::time::timeout(timeout, rx).await {
        Err(_) => Err(Refusal::Etcd(EtcdError::Timeout)),
        Ok(r) => r.map_err(|_| stopped)?,
    }
}

/// Gathers queued writes into one entry per proposal. While `client_write` runs, new requests
/// queue up; they form the next batch.
pub(super) async fn batcher<E: Engine>(raft: Raft<E>, mut rx: mpsc::Receiver<(WriteRequest, Reply)>, cfg: BatchConfig) {
    let mut carry: Option<(WriteRequest, Reply)> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < cfg.max_requests.max(1) {
            match rx.try_recv() {
                Ok(p) => {
                    let len = p.0.encoded_len();
                    if bytes + len > cfg.max_bytes {
                        carry = Some(p);
                        break;
                    }
                    bytes += len;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let outcome = propose_unless_deposed(&raft, RequestBatch::new(&requests)).await;
        match outcome {
            Ok(results) => {
                debug_assert_eq!(results.len(), replies.len());
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(Refusal::Etcd));
                }
            }
            Err(refusal) => {
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
    }
}

/// Proposes one batch. If this member stops leading while the batch is in flight, its waiters
/// get "leader changed" at once rather than waiting for the new leader to commit or truncate the
/// entry (openraft 0.9 keeps them waiting); the outcome is unknown, as with a timeout.
async fn propose_unless_deposed<E: Engine>(
    raft: &Raft<E>,
    batch: RequestBatch,
) -> Result<Vec<crate::request::WriteResult>, Refusal> {
    let mut metrics = raft.metrics();
    let (led, term) = {
        let m = metrics.borrow_and_update();
        (m.state == ServerState::Leader, m.current_term)
    };
    let write = raft.client_write(batch);
    let deposed = async {
        if !led {
            return std::future::pending().await;
        }
        let _ = metrics.wait_until(|m| m.state != ServerState::Leader || m.current_term != term).await;
    };
    tokio::select! {
        r = write => match r {
            Ok(resp) => Ok(resp.data.results),
            // Rejected before appending, or truncated by a new leader: never committed.
            Err(RaftError::APIError(
                ClientWriteError::ForwardToLeader(_) | ClientWriteError::LogEntryDiscarded(_),
            )) => Err(Refusal::NotLeader),
            // No write here carries a precondition.
            Err(RaftError::APIError(ClientWriteError::PreconditionFailed(p))) => {
                Err(Refusal::Etcd(EtcdError::Other(p.to_string())))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(m))) => {
                Err(Refusal::Etcd(EtcdError::Other(m.to_string())))
            }
            Err(RaftError::Fatal(_)) => Err(Refusal::Etcd(EtcdError::ServerStopped)),
        },
        () = deposed => Err(Refusal::Etcd(EtcdError::LeaderChanged)),
    }
}
