//! etcd's Election service (v3electionpb): Campaign, Proclaim, Leader, Observe, Resign, the
//! server side of etcd's election recipe.
//!
//! A candidate of election `name` with lease `L` holds the key `name/<L in hex>`, whose value is
//! its proclamation; the key created first leads. Campaign waits like a lock (only for the key
//! just ahead, and granted only if the candidate still holds its place); the leader key's
//! create revision identifies the leadership, and Proclaim and Resign act only on it.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::request_op::Request as Op;
use kv_api::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};
use kv_api::v3electionpb::election_server::Election;
use kv_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use kv_api::EtcdError;
use raft_core::engine::Engine;
use raft_core::{WriteRequest, WriteResponse};
use tonic::{Request, Response, Status};

use super::queue::Queue;
use super::recipe::{enqueue, first, lease_or_implicit, next_apply, queue_key, still_holds, wait_turn, write};
use super::Ctx;

/// The Election service over a node.
pub struct ElectionService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> ElectionService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        ElectionService { ctx }
    }

    /// Runs `ops` if `leader` still leads (its key has the create revision it was elected
    /// with); etcd's "election: not leader" otherwise.
    async fn as_leader(&self, leader: &LeaderKey, ops: Vec<RequestOp>) -> Result<TxnResponseHeader, Status> {
        let leads = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: leader.key.clone(),
            target_union: Some(TargetUnion::CreateRevision(leader.rev)),
            ..Default::default()
        };
        let txn = TxnRequest { compare: vec![leads], success: ops, failure: vec![] };
        match write(&self.ctx, WriteRequest::Txn(txn)).await? {
            WriteResponse::Txn(r) if r.succeeded => Ok(r.header),
            WriteResponse::Txn(_) => Err(not_leader()),
            _ => Err(Status::internal("raftkv: an election txn was answered with something else")),
        }
    }
}

type TxnResponseHeader = Option<kv_api::etcdserverpb::ResponseHeader>;

fn not_leader() -> Status {
    EtcdError::Other("election: not leader".into()).to_status()
}

fn no_leader() -> Status {
    EtcdError::Other("election: no leader".into()).to_status()
}

fn leader_required() -> Status {
    EtcdError::Other("\"leader\" field must be provided".into()).to_status()
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<E: Engine> Election for ElectionService<E> {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let req = req.into_inner();
        self.ctx.check_size(&req)?;
        if req.name.is_empty() {
            return Err(EtcdError::KeyNotProvided.to_status());
        }
        let lease = lease_or_implicit(&self.ctx, req.lease).await?;
        let (key, prefix) = queue_key(&req.name, lease);
        let queued = enqueue(&self.ctx, &key, &prefix, &req.value, lease).await?;
        let mine = &queued.mine;
        let leader = LeaderKey { name: req.name, key: key.clone(), rev: mine.create_revision, lease };
        if mine.value == req.value && queued.is_first() {
            let header = Some(self.ctx.header(queued.revision, None));
            return Ok(Response::new(CampaignResponse { header, leader: Some(leader) }));
        }
        if mine.value != req.value {
            // Campaigning again with the same lease: the candidate's value is the new one.
            let put = PutRequest { key, value: req.value, lease, ..Default::default() };
            self.as_leader(&leader, vec![RequestOp { request: Some(Op::RequestPut(put)) }]).await?;
        }
        wait_turn(&self.ctx, &prefix, mine).await?;
        let Some(revision) = still_holds(&self.ctx, mine).await? else {
            return Err(EtcdError::LeaseNotFound.to_status());
        };
        Ok(Response::new(CampaignResponse { header: Some(self.ctx.header(revision, None)), leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let req = req.into_inner();
        self.ctx.check_size(&req)?;
        let leader = req.leader.ok_or_else(leader_required)?;
        let put = PutRequest { key: leader.key.clone(), value: req.value, lease: leader.lease, ..Default::default() };
        let mut header = self.as_leader(&leader, vec![RequestOp { request: Some(Op::RequestPut(put)) }]).await?;
        self.ctx.fill(&mut header, None);
        Ok(Response::new(ProclaimResponse { header }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let (_, prefix) = queue_key(&req.into_inner().name, 0);
        let (kv, revision) = first(&self.ctx, &prefix).await?;
        let kv = kv.ok_or_else(no_leader)?;
        Ok(Response::new(LeaderResponse { header: Some(self.ctx.header(revision, None)), kv: Some(kv) }))
    }

    type ObserveStream = ObserveStream;

    /// Every change of leader (or of its proclamation), in revision order, from the current
    /// leader on: the election's queue is carried forward through the stored history, so no
    /// leader is skipped however short its term, and all observers see the same sequence.
    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<ObserveStream>, Status> {
        let (_, prefix) = queue_key(&req.into_inner().name, 0);
        let ctx = self.ctx.clone();
        // Subscribed before the first read: no apply after it goes unnoticed.
        let (mut applied, _) = ctx.node.store().subscribe();
        let mut queue = Queue::load(&ctx, &prefix).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut closing = ctx.closing.clone();
            let mut last: Option<(Vec<u8>, i64)> = None;
            let mut pending = Vec::new();
            // Queues an answer when the head differs from the last one sent.
            let mut news = |q: &Queue, pending: &mut Vec<LeaderResponse>| {
                let Some(kv) = q.head() else { return };
                let seen = (kv.key.clone(), kv.mod_revision);
                if last.as_ref() != Some(&seen) {
                    last = Some(seen);
                    pending.push(LeaderResponse { header: Some(ctx.header(q.revision(), None)), kv: Some(kv.clone()) });
                }
            };
            news(&queue, &mut pending);
            loop {
                for answer in pending.drain(..) {
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = next_apply(&mut applied) => if r.is_err() { return },
                    _ = async { let _ = closing.wait_for(|c| *c).await; } => {
                        let _ = tx.send(Err(EtcdError::ServerStopped.to_status())).await;
                        return;
                    }
                    _ = tx.closed() => return,
                }
                if let Err(e) = queue.advance(&ctx, |q| news(q, &mut pending)).await {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let leader = req.into_inner().leader.ok_or_else(leader_required)?;
        let delete = DeleteRangeRequest { key: leader.key.clone(), ..Default::default() };
        // A resign from a leadership that already ended does nothing (etcd's recipe).
        let ops = vec![RequestOp { request: Some(Op::RequestDeleteRange(delete)) }];
        let mut header: TxnResponseHeader = self.as_leader(&leader, ops).await.unwrap_or_default();
        self.ctx.fill(&mut header, None);
        Ok(Response::new(ResignResponse { header }))
    }
}
