//! etcd's Lock service (v3lockpb): Lock and Unlock, the server side of etcd's mutex recipe.
//!
//! A lock `name` held with lease `L` is the key `name/<L in hex>`, attached to `L`. Waiters are
//! ordered by their keys' create revisions; each waits only for the key just ahead of it (no
//! thundering herd). Before granting, the waiter checks through the leader that its own key is
//! still there and its lease alive: a waiter whose lease expired while it waited is refused
//! (etcd issue 11456 granted it). The key's create revision only grows from one holder to the
//! next, so it is a fencing token: a holder's writes compared against it in a Txn are refused
//! once the lock has passed on.

use std::sync::Arc;

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kv_api::etcdserverpb::request_op::Request as Op;
use kv_api::etcdserverpb::response_op::Response as OpResponse;
use kv_api::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use kv_api::mvccpb::KeyValue;
use kv_api::v3lockpb::lock_server::Lock;
use kv_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use kv_api::{Consistency, EtcdError};
use raft_core::engine::Engine;
use raft_core::{ReadRequirement, WriteRequest, WriteResponse};
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::error;

/// The TTL of the lease the server grants for a Lock that names none (etcd's).
const IMPLICIT_LEASE_TTL: i64 = 60;

/// The Lock service over a node.
pub struct LockService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> LockService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        LockService { ctx }
    }

    async fn write(&self, req: WriteRequest) -> Result<WriteResponse, Status> {
        self.ctx.node.write(req).await.map_err(error::node)
    }

    /// A linearizable read of `req`.
    async fn read(&self, req: RangeRequest) -> Result<kv_api::etcdserverpb::RangeResponse, Status> {
        self.ctx.node.read_barrier(ReadRequirement::level(Consistency::Linearizable)).await.map_err(error::node)?;
        self.ctx.node.store().range(&req).map_err(error::mvcc)
    }

    /// Creates `key` attached to `lease` unless it exists; returns the key as stored.
    async fn enqueue(&self, key: &[u8], lease: i64) -> Result<KeyValue, Status> {
        let absent = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        };
        let put = PutRequest { key: key.to_vec(), lease, ..Default::default() };
        let get = RangeRequest { key: key.to_vec(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![absent],
            success: vec![
                RequestOp { request: Some(Op::RequestPut(put)) },
                RequestOp { request: Some(Op::RequestRange(get.clone())) },
            ],
            failure: vec![RequestOp { request: Some(Op::RequestRange(get)) }],
        };
        let WriteResponse::Txn(resp) = self.write(WriteRequest::Txn(txn)).await? else {
            return Err(Status::internal("raftkv: a lock's txn was answered with something else"));
        };
        resp.responses
            .into_iter()
            .filter_map(|r| match r.response {
                Some(OpResponse::ResponseRange(r)) => r.kvs.into_iter().next(),
                _ => None,
            })
            .next()
            .ok_or_else(|| Status::internal("raftkv: a lock's key is missing right after its txn"))
    }

    /// The key under `prefix` created last before `revision`, if any: the waiter just ahead.
    async fn ahead(&self, prefix: &[u8], revision: i64) -> Result<Option<KeyValue>, Status> {
        let req = RangeRequest {
            key: prefix.to_vec(),
            range_end: kv_client_prefix_end(prefix),
            max_create_revision: revision - 1,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Create as i32,
            limit: 1,
            ..Default::default()
        };
        Ok(self.read(req).await?.kvs.into_iter().next())
    }

    /// Waits until the keys ahead of `mine` under `prefix` are all gone.
    async fn wait_turn(&self, prefix: &[u8], mine: &KeyValue) -> Result<(), Status> {
        let store = self.ctx.node.store();
        loop {
            // Subscribed before the read: a delete after it is not missed.
            let (mut applied, _) = store.subscribe();
            let Some(ahead) = self.ahead(prefix, mine.create_revision).await? else { return Ok(()) };
            // Any apply may be the delete of the key ahead; read again after each (a lagging
            // subscription reads again too).
            loop {
                match applied.recv().await {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return Err(EtcdError::ServerStopped.to_status())
                    }
                }
                let still = self.read(RangeRequest { key: ahead.key.clone(), ..Default::default() }).await?;
                if still.kvs.first().is_none_or(|kv| kv.create_revision != ahead.create_revision) {
                    break;
                }
            }
        }
    }
}

/// The range end of every key with `prefix`.
fn kv_client_prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[tonic::async_trait]
impl<E: Engine> Lock for LockService<E> {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(EtcdError::KeyNotProvided.to_status());
        }
        let lease = match req.lease {
            0 => self.ctx.node.lease_grant(0, IMPLICIT_LEASE_TTL).await.map_err(error::node)?.id,
            l => l,
        };
        let mut prefix = req.name.clone();
        prefix.push(b'/');
        let key = [prefix.clone(), format!("{lease:x}").into_bytes()].concat();
        let mine = self.enqueue(&key, lease).await?;
        self.wait_turn(&prefix, &mine).await?;
        // Granted only if the waiter still holds its place: its key, as created, and its lease
        // alive at the leader now.
        let now = self.read(RangeRequest { key: key.clone(), ..Default::default() }).await?;
        let alive = self.ctx.node.lease_time_to_live(lease, false).await.map_err(error::node)?;
        let holds = now.kvs.first().is_some_and(|kv| kv.create_revision == mine.create_revision);
        if !holds || alive.is_none() {
            return Err(EtcdError::LeaseNotFound.to_status());
        }
        Ok(Response::new(LockResponse {
            header: Some(self.ctx.header(now.header.map_or(0, |h| h.revision), None)),
            key,
        }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let key = req.into_inner().key;
        let WriteResponse::DeleteRange(mut resp) =
            self.write(WriteRequest::DeleteRange(DeleteRangeRequest { key, ..Default::default() })).await?
        else {
            return Err(Status::internal("raftkv: an unlock was answered with something else"));
        };
        self.ctx.fill(&mut resp.header, None);
        Ok(Response::new(UnlockResponse { header: resp.header }))
    }
}
