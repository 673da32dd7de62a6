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

use kv_api::etcdserverpb::DeleteRangeRequest;
use kv_api::v3lockpb::lock_server::Lock;
use kv_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use kv_api::EtcdError;
use raft_core::engine::Engine;
use raft_core::{WriteRequest, WriteResponse};
use tonic::{Request, Response, Status};

use super::recipe::{enqueue, lease_or_implicit, queue_key, still_holds, wait_turn, write};
use super::Ctx;

/// The Lock service over a node.
pub struct LockService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> LockService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        LockService { ctx }
    }
}

#[tonic::async_trait]
impl<E: Engine> Lock for LockService<E> {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let req = req.into_inner();
        self.ctx.check_size(&req)?;
        if req.name.is_empty() {
            return Err(EtcdError::KeyNotProvided.to_status());
        }
        let lease = lease_or_implicit(&self.ctx, req.lease).await?;
        let (key, prefix) = queue_key(&req.name, lease);
        let queued = enqueue(&self.ctx, &key, &prefix, b"", lease).await?;
        let revision = if queued.is_first() {
            queued.revision
        } else {
            wait_turn(&self.ctx, &prefix, &queued.mine).await?;
            // Granted only if the waiter still holds its place.
            still_holds(&self.ctx, &queued.mine).await?.ok_or_else(|| EtcdError::LeaseNotFound.to_status())?
        };
        Ok(Response::new(LockResponse { header: Some(self.ctx.header(revision, None)), key }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let req = req.into_inner();
        self.ctx.check_size(&req)?;
        if req.key.is_empty() {
            return Err(EtcdError::KeyNotProvided.to_status());
        }
        let key = req.key;
        let delete = WriteRequest::DeleteRange(DeleteRangeRequest { key, ..Default::default() });
        let WriteResponse::DeleteRange(mut resp) = write(&self.ctx, delete).await? else {
            return Err(Status::internal("raftkv: an unlock was answered with something else"));
        };
        self.ctx.fill(&mut resp.header, None);
        Ok(Response::new(UnlockResponse { header: resp.header }))
    }
}
