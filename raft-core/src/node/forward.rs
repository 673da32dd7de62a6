//! A follower's requests on their way to the leader: writes (the Forward RPC) and read-index
//! requests (the ReadIndex RPC), each gathered so that one RPC carries many, with a bounded
//! number in flight per leader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_api::EtcdError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::lease::IndexKind;
use super::{BatchConfig, Refusal};
use crate::network::{PeerError, Peers, Rpc};
use crate::request::{WriteRequest, WriteResponse};
use crate::typ::{MetricsWatch, NodeId, PeerNode};
use openraft::async_runtime::WatchReceiver;

/// A follower's request queued for the leader, to share one RPC with others of its kind.
pub(super) struct ToLeader<T, A> {
    /// The leader when it was queued; if another leads by the time it would be sent, it is not
    /// sent but refused "not leader" (and tried again at the new one).
    pub(super) leader: NodeId,
    pub(super) node: PeerNode,
    pub(super) request: T,
    /// When the client request gives up; the RPC carrying it waits no longer than its latest.
    pub(super) deadline: Instant,
    pub(super) reply: oneshot::Sender<A>,
}

/// A write a follower sends on to the leader (the Forward RPC). The reply is the leader's
/// answer, or the etcd error the forwarding itself failed with (its outcome as that error says).
pub(super) type Forward = ToLeader<WriteRequest, Result<Result<WriteResponse, Refusal>, EtcdError>>;

/// A follower's read waiting for a read index of its kind from the leader (the ReadIndex RPC).
pub(super) type IndexAsk = ToLeader<IndexKind, Result<u64, Refusal>>;

/// An answer that can say "not leader".
pub(super) trait NotLeader {
    fn not_leader() -> Self;
}

impl NotLeader for Result<Result<WriteResponse, Refusal>, EtcdError> {
    fn not_leader() -> Self {
        Ok(Err(Refusal::NotLeader))
    }
}

impl NotLeader for Result<u64, Refusal> {
    fn not_leader() -> Self {
        Err(Refusal::NotLeader)
    }
}

impl<T, A: NotLeader> ToLeader<T, A> {
    /// Whether the client request behind it has given up (it timed out or was cancelled).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Answers it "not leader": nothing was sent, so the request may go to the next leader.
    fn refuse(self) {
        let _ = self.reply.send(A::not_leader());
    }
}

/// ReadIndex RPCs a follower keeps in flight to the leader; reads that arrive meanwhile share
/// the next one. Two so a read never waits a whole round trip for an RPC that was sent just
/// before it arrived (it takes the second slot); more gave no more sharing.
const INDEX_ASKS_IN_FLIGHT: usize = 2;

/// Forward RPCs a follower keeps in flight to the leader. While they are, new writes queue and
/// go together in the next one. More than one so the follower's writes can join every proposal
/// of the leader (which has one in flight and takes what queued during it), not every other.
const FORWARDS_IN_FLIGHT: usize = 4;

/// Asks `leader` for a read index of `kind`. A timeout is final (the read times out); any other
/// failure is taken as "not the leader", so the read waits for another leader and asks again.
pub(super) async fn ask_read_index(
    peers: &Peers,
    leader: NodeId,
    node: &PeerNode,
    kind: IndexKind,
    timeout: Duration,
) -> Result<u64, Refusal> {
    match peers.call(leader, node, Rpc::ReadIndex, &kind, timeout).await {
        Ok(reply) => reply,
        Err(PeerError::Timeout { .. }) => Err(Refusal::Etcd(EtcdError::Timeout)),
        Err(_) => Err(Refusal::NotLeader),
    }
}

/// Hands out the RPC slots to each leader, `per_leader` at a time.
///
/// Why per leader and why watch the leader: RPCs to a leader that has just been cut off hang
/// until their timeout. With one pool for all leaders, they held every slot and requests for
/// the new leader waited behind them for up to the request timeout.
struct Slots {
    per_leader: usize,
    pools: HashMap<NodeId, Arc<tokio::sync::Semaphore>>,
    metrics: MetricsWatch,
}

impl Slots {
    fn new(per_leader: usize, metrics: MetricsWatch) -> Slots {
        Slots { per_leader, pools: HashMap::new(), metrics }
    }

    /// Takes the next request that is still wanted (from `carry`, else `rx`) and a slot for
    /// its leader. A request whose leader stops leading before a slot frees up is refused
    /// "not leader" here. None once `rx` is closed.
    async fn next<T, A: NotLeader>(
        &mut self,
        carry: &mut Option<ToLeader<T, A>>,
        rx: &mut mpsc::Receiver<ToLeader<T, A>>,
    ) -> Option<(ToLeader<T, A>, tokio::sync::OwnedSemaphorePermit)> {
        loop {
            let first = match carry.take() {
                Some(q) => q,
                None => rx.recv().await?,
            };
            if first.abandoned() {
                continue;
            }
            let leader = first.leader;
            let pool =
                self.pools.entry(leader).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_leader)));
            let mut metrics = self.metrics.clone();
            tokio::select! {
                permit = pool.clone().acquire_owned() => {
                    return Some((first, permit.expect("the semaphore is never closed")));
                }
                _ = metrics.wait_until(|m| m.current_leader != Some(leader)) => first.refuse(),
            }
        }
    }
}

/// Adds what queued behind `first` to its batch while `fits` (same leader, within bounds); the
/// first request that does not fit is left in `carry`. Requests already given up are dropped.
fn gather<T, A: NotLeader>(
    first: ToLeader<T, A>,
    carry: &mut Option<ToLeader<T, A>>,
    rx: &mut mpsc::Receiver<ToLeader<T, A>>,
    mut fits: impl FnMut(&[ToLeader<T, A>], &ToLeader<T, A>) -> bool,
) -> Vec<ToLeader<T, A>> {
    let mut batch = vec![first];
    while let Ok(q) = rx.try_recv() {
        if q.abandoned() {
            continue;
        }
        if q.leader != batch[0].leader || !fits(&batch, &q) {
            *carry = Some(q);
            break;
        }
        batch.push(q);
    }
    batch
}

/// The RPC timeout of a batch: what is left until its latest request deadline.
fn batch_timeout<T, A>(batch: &[ToLeader<T, A>]) -> Duration {
    let latest = batch.iter().map(|q| q.deadline).max().unwrap_or_else(Instant::now);
    latest.saturating_duration_since(Instant::now())
}

/// Resolves once every one of `replies` has been dropped by its waiter: nobody wants the
/// answer, so the RPC is abandoned.
async fn all_abandoned<T>(replies: &mut [oneshot::Sender<T>]) {
    for reply in replies {
        reply.closed().await;
    }
}

/// A follower's ReadIndex requests, shared: one RPC answers every read that was queued before
/// it was sent. That is all each of them needs: the leader confirms its leadership after the
/// RPC arrives, so after every one of those reads arrived. A read arriving while an RPC is in
/// flight waits for a later one. One RPC per read made each linearizable read on a follower
/// cost the leader a peer request.
pub(super) async fn index_asker(peers: Peers, mut rx: mpsc::Receiver<IndexAsk>, metrics: MetricsWatch) {
    let mut slots = Slots::new(INDEX_ASKS_IN_FLIGHT, metrics);
    let mut carry: Option<IndexAsk> = None;
    while let Some((first, permit)) = slots.next(&mut carry, &mut rx).await {
        let (leader, node, kind) = (first.leader, first.node.clone(), first.request);
        let batch = gather(first, &mut carry, &mut rx, |_, a| a.request == kind);
        let timeout = batch_timeout(&batch);
        let mut replies: Vec<_> = batch.into_iter().map(|a| a.reply).collect();
        let peers = peers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let index = tokio::select! {
                index = ask_read_index(&peers, leader, &node, kind, timeout) => index,
                () = all_abandoned(&mut replies) => return,
            };
            for reply in replies {
                let _ = reply.send(index.clone());
            }
        });
    }
}

/// Sends queued writes on to the leader, as many in one Forward RPC as queued (bounded like a
/// Raft entry, and only writes with small answers together), with up to [`FORWARDS_IN_FLIGHT`]
/// RPCs at once to each leader. One RPC per write made forwarding the largest CPU cost of a put
/// that arrives at a follower.
pub(super) async fn forwarder(peers: Peers, mut rx: mpsc::Receiver<Forward>, cfg: BatchConfig, metrics: MetricsWatch) {
    let mut slots = Slots::new(FORWARDS_IN_FLIGHT, metrics);
    let mut carry: Option<Forward> = None;
    while let Some((first, permit)) = slots.next(&mut carry, &mut rx).await {
        let mut bytes = first.request.encoded_len();
        let batch = if first.request.answer_is_small() {
            gather(first, &mut carry, &mut rx, |batch, f| {
                let len = f.request.encoded_len();
                let fits =
                    f.request.answer_is_small() && batch.len() < cfg.max_requests && bytes + len <= cfg.max_bytes;
                if fits {
                    bytes += len;
                }
                fits
            })
        } else {
            vec![first]
        };
        let timeout = batch_timeout(&batch);
        let peers = peers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (leader, node) = (batch[0].leader, batch[0].node.clone());
            let (requests, mut replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|f| (f.request, f.reply)).unzip();
            let call =
                peers.call::<_, Vec<Result<WriteResponse, Refusal>>>(leader, &node, Rpc::Forward, &requests, timeout);
            let answer = tokio::select! {
                answer = call => answer,
                // Every client gave up (timed out: outcome unknown to them already).
                () = all_abandoned(&mut replies) => return,
            };
            match answer {
                Ok(results) if results.len() == replies.len() => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                outcome => {
                    let err = match outcome {
                        // The leader this member knew is gone and never got the writes: "no
                        // leader" tells the clients they may safely send them again.
                        Err(PeerError::NotConnected { .. }) => EtcdError::NoLeader,
                        // The connection broke mid-call: whether the leader got them is unknown.
                        Err(PeerError::Unreachable { .. }) => EtcdError::LeaderChanged,
                        Err(PeerError::Timeout { .. }) => EtcdError::Timeout,
                        Err(e) => EtcdError::Other(e.to_string()),
                        Ok(results) => EtcdError::Other(format!(
                            "leader answered {} forwarded writes with {} results",
                            replies.len(),
                            results.len()
                        )),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}
