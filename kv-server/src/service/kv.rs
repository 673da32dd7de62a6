//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::kv_server::Kv;
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use kv_api::{Consistency, EtcdError};
use raft_core::engine::Engine;
use raft_core::mvcc::validate;
use raft_core::state_machine::txn_is_read_only;
use raft_core::{ReadRequirement, WriteRequest, WriteResponse};
use tonic::{Request as Rpc, Response, Status};

use super::Ctx;
use crate::error;

/// The KV service over a node.
pub struct KvService<E: Engine> {
    ctx: Arc<Ctx<E>>,
}

impl<E: Engine> KvService<E> {
    pub fn new(ctx: Arc<Ctx<E>>) -> Self {
        KvService { ctx }
    }

    async fn propose(&self, req: WriteRequest) -> Result<WriteResponse, Status> {
        self.ctx.node.write(req).await.map_err(error::node)
    }
}

/// The level a Range asks for: a set `consistency` wins; unset follows etcd's `serializable`.
pub fn requested_level(r: &RangeRequest) -> Result<Consistency, EtcdError> {
    match Consistency::try_from(r.consistency) {
        Ok(Consistency::Unspecified) if r.serializable => Ok(Consistency::Serializable),
        Ok(Consistency::Unspecified) => Ok(Consistency::Linearizable),
        Ok(level) => Ok(level),
        Err(_) => Err(EtcdError::InvalidArgument(format!("unknown consistency level {}", r.consistency))),
    }
}

/// What a Range asks of the serving member: its level and that level's parameters.
pub fn requirement(r: &RangeRequest) -> Result<ReadRequirement, EtcdError> {
    let level = requested_level(r)?;
    if r.min_revision < 0 {
        return Err(EtcdError::InvalidArgument(format!("min_revision {} is negative", r.min_revision)));
    }
    if level == Consistency::Bounded && r.max_staleness_ms <= 0 {
        return Err(EtcdError::InvalidArgument("bounded reads need max_staleness_ms > 0".into()));
    }
    Ok(ReadRequirement {
        level,
        min_revision: r.min_revision,
        max_staleness: Duration::from_millis(r.max_staleness_ms.max(0) as u64),
    })
}

/// Strength order of the levels, weakest first.
fn strength(c: Consistency) -> u8 {
    match c {
        Consistency::Serializable => 0,
        Consistency::Bounded => 1,
        Consistency::Session => 2,
        Consistency::Lease => 3,
        Consistency::Linearizable | Consistency::Unspecified => 4,
    }
}

/// A read-only txn is served at the strongest level any of its ranges asks for (serializable
/// only if all of them are; linearizable for a txn with no range at all, like etcd), with the
/// highest `min_revision` and the tightest staleness bound among them.
fn txn_requirement(t: &TxnRequest) -> Result<ReadRequirement, EtcdError> {
    let mut req: Option<ReadRequirement> = None;
    for op in t.success.iter().chain(&t.failure) {
        let r = match &op.request {
            Some(Request::RequestRange(r)) => requirement(r)?,
            Some(Request::RequestTxn(inner)) => txn_requirement(inner)?,
            _ => continue,
        };
        req = Some(match req {
            None => r,
            Some(cur) => ReadRequirement {
                level: if strength(cur.level) >= strength(r.level) { cur.level } else { r.level },
                min_revision: cur.min_revision.max(r.min_revision),
                max_staleness: match (cur.max_staleness.is_zero(), r.max_staleness.is_zero()) {
                    (true, _) => r.max_staleness,
                    (_, true) => cur.max_staleness,
                    _ => cur.max_staleness.min(r.max_staleness),
                },
            },
        });
    }
    Ok(req.unwrap_or(ReadRequirement::level(Consistency::Linearizable)))
}

#[tonic::async_trait]
impl<E: Engine> Kv for KvService<E> {
    async fn range(&self, request: Rpc<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::range(&req).map_err(error::invalid)?;
        let need = requirement(&req).map_err(error::invalid)?;
        let served = self.ctx.node.read_barrier(need).await.map_err(error::node)?;
        let mut resp = self.ctx.node.store().range(&req).map_err(error::mvcc)?;
        self.ctx.fill(&mut resp.header, Some(served));
        Ok(Response::new(resp))
    }

    async fn put(&self, request: Rpc<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::put(&req).map_err(error::invalid)?;
        match self.propose(WriteRequest::Put(req)).await? {
            WriteResponse::Put(mut resp) => {
                self.ctx.fill(&mut resp.header, None);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(&self, request: Rpc<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::delete_range(&req).map_err(error::invalid)?;
        match self.propose(WriteRequest::DeleteRange(req)).await? {
            WriteResponse::DeleteRange(mut resp) => {
                self.ctx.fill(&mut resp.header, None);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Rpc<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        self.ctx.check_size(&req)?;
        validate::txn(&req, &self.ctx.limits).map_err(error::invalid)?;
        if txn_is_read_only(&req) {
            let need = txn_requirement(&req).map_err(error::invalid)?;
            let served = self.ctx.node.read_barrier(need).await.map_err(error::node)?;
            let mut resp = self.ctx.node.store().read_txn(&req).map_err(error::mvcc)?;
            self.ctx.fill(&mut resp.header, Some(served));
            return Ok(Response::new(resp));
        }
        match self.propose(WriteRequest::Txn(req)).await? {
            WriteResponse::Txn(mut resp) => {
                self.ctx.fill(&mut resp.header, None);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(&self, request: Rpc<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        match self.propose(WriteRequest::Compact(req)).await? {
            WriteResponse::Compact(mut resp) => {
                self.ctx.fill(&mut resp.header, None);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: WriteResponse) -> Status {
    tracing::error!("state machine answered with the wrong response kind: {r:?}");
    EtcdError::Other("raftkv: internal error: mismatched response".into()).to_status()
}

#[cfg(test)]
mod tests {
    use kv_api::etcdserverpb::RequestOp;

    use super::*;

    fn range(level: Consistency, serializable: bool, min_revision: i64, max_staleness_ms: i64) -> RequestOp {
        let r = RangeRequest {
            key: b"k".to_vec(),
            consistency: level as i32,
            serializable,
            min_revision,
            max_staleness_ms,
            ..Default::default()
        };
        RequestOp { request: Some(Request::RequestRange(r)) }
    }

    #[test]
    fn a_set_level_wins_and_unset_follows_serializable() {
        let get = |op: RequestOp| match op.request {
            Some(Request::RequestRange(r)) => requirement(&r).map(|q| q.level),
            _ => unreachable!(),
        };
        assert_eq!(get(range(Consistency::Unspecified, true, 0, 0)), Ok(Consistency::Serializable));
        assert_eq!(get(range(Consistency::Unspecified, false, 0, 0)), Ok(Consistency::Linearizable));
        assert_eq!(get(range(Consistency::Lease, true, 0, 0)), Ok(Consistency::Lease));
        assert!(get(range(Consistency::Bounded, false, 0, 0)).is_err(), "bounded needs a bound");
        assert!(get(range(Consistency::Session, false, -1, 0)).is_err(), "negative revision");
    }

    #[test]
    fn a_read_only_txn_takes_the_strongest_level_and_the_tightest_parameters() {
        let txn = TxnRequest {
            success: vec![range(Consistency::Serializable, false, 0, 0), range(Consistency::Session, false, 7, 0)],
            failure: vec![range(Consistency::Bounded, false, 3, 500), range(Consistency::Bounded, false, 0, 200)],
            ..Default::default()
        };
        let need = txn_requirement(&txn).unwrap();
        assert_eq!(need.level, Consistency::Session);
        assert_eq!((need.min_revision, need.max_staleness), (7, Duration::from_millis(200)));
        let none = TxnRequest::default();
        assert_eq!(txn_requirement(&none).unwrap().level, Consistency::Linearizable, "like etcd");
        let all_serializable =
            TxnRequest { success: vec![range(Consistency::Unspecified, true, 0, 0)], ..Default::default() };
        assert_eq!(txn_requirement(&all_serializable).unwrap().level, Consistency::Serializable);
    }
}
