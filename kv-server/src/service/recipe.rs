//! What the Lock and Election services share (etcd's client recipes, run in the server): a
//! queue of keys under a prefix ordered by create revision, each waiter waiting only for the
//! key just ahead, and the check that a waiter still holds its place before it is granted.

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kv_api::etcdserverpb::request_op::Request as Op;
use kv_api::etcdserverpb::response_op::Response as OpResponse;
use kv_api::etcdserverpb::{Compare, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest};
use kv_api::mvccpb::KeyValue;
use kv_api::{Consistency, EtcdError};
use raft_core::engine::Engine;
use raft_core::{ReadRequirement, WriteRequest, WriteResponse};
use tonic::Status;

use super::Ctx;
use crate::error;

pub async fn write<E: Engine>(ctx: &Ctx<E>, req: WriteRequest) -> Result<WriteResponse, Status> {
    ctx.node.write(req).await.map_err(error::node)
}

/// The TTL of the lease the server grants for a Lock or Campaign that names none (etcd's
/// session default).
const IMPLICIT_LEASE_TTL: i64 = 60;

/// `lease`, or a new lease of [`IMPLICIT_LEASE_TTL`] when it is 0, as etcd's server does: a
/// queue key without a lease would hold the lock or the leadership for ever.
pub async fn lease_or_implicit<E: Engine>(ctx: &Ctx<E>, lease: i64) -> Result<i64, Status> {
    match lease {
        0 => Ok(ctx.node.lease_grant(0, IMPLICIT_LEASE_TTL).await.map_err(error::node)?.id),
        l => Ok(l),
    }
}

/// A linearizable read of `req`.
pub async fn read<E: Engine>(ctx: &Ctx<E>, req: RangeRequest) -> Result<RangeResponse, Status> {
    ctx.node.read_barrier(ReadRequirement::level(Consistency::Linearizable)).await.map_err(error::node)?;
    ctx.node.store().range(&req).map_err(error::mvcc)
}

/// The key of `lease` in the queue `name`: `name/<lease in hex>`, and the queue's prefix.
pub fn queue_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    ([prefix.clone(), format!("{lease:x}").into_bytes()].concat(), prefix)
}

/// A queue key as stored, and the queue's first key at the same revision.
pub struct Enqueued {
    pub mine: KeyValue,
    pub first: Option<KeyValue>,
    /// The revision both were read at.
    pub revision: i64,
}

impl Enqueued {
    /// Whether the key is already first: the lock or leadership is held at [`Self::revision`]
    /// (the key was there, so its lease was alive then), with no wait and no further read.
    pub fn is_first(&self) -> bool {
        self.first.as_ref().is_some_and(|f| f.create_revision == self.mine.create_revision)
    }
}

/// Creates `key` with `value` attached to `lease` unless it exists; returns the key as stored
/// and the first key of the queue under `prefix`, both read in the same Txn (as etcd's mutex
/// does), so that an uncontended lock costs one write.
pub async fn enqueue<E: Engine>(
    ctx: &Ctx<E>,
    key: &[u8],
    prefix: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<Enqueued, Status> {
    let absent = Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let get = RequestOp { request: Some(Op::RequestRange(RangeRequest { key: key.to_vec(), ..Default::default() })) };
    let first = RequestOp { request: Some(Op::RequestRange(first_request(prefix))) };
    let txn = TxnRequest {
        compare: vec![absent],
        success: vec![RequestOp { request: Some(Op::RequestPut(put)) }, get.clone(), first.clone()],
        failure: vec![get, first],
    };
    let WriteResponse::Txn(resp) = write(ctx, WriteRequest::Txn(txn)).await? else {
        return Err(Status::internal("raftkv: a queue txn was answered with something else"));
    };
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    let mut ranges = resp.responses.into_iter().filter_map(|r| match r.response {
        Some(OpResponse::ResponseRange(r)) => Some(r.kvs.into_iter().next()),
        _ => None,
    });
    let mine = ranges
        .next()
        .flatten()
        .ok_or_else(|| Status::internal("raftkv: a queue key is missing right after its txn"))?;
    Ok(Enqueued { mine, first: ranges.next().flatten(), revision })
}

/// The range end of every key with `prefix` (etcd's rule: `"\0"`, every key from the prefix
/// on, when no key is greater).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    raft_core::engine::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

/// The read of the first key of the queue under `prefix`, by create revision.
fn first_request(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    }
}

/// The first key of the queue under `prefix` (the holder, the leader), if any.
pub async fn first<E: Engine>(ctx: &Ctx<E>, prefix: &[u8]) -> Result<(Option<KeyValue>, i64), Status> {
    let r = read(ctx, first_request(prefix)).await?;
    Ok((r.kvs.into_iter().next(), r.header.map_or(0, |h| h.revision)))
}

/// The key under `prefix` created last before `revision`, if any: the waiter just ahead.
async fn ahead<E: Engine>(ctx: &Ctx<E>, prefix: &[u8], revision: i64) -> Result<Option<KeyValue>, Status> {
    let req = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        max_create_revision: revision - 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        limit: 1,
        ..Default::default()
    };
    Ok(read(ctx, req).await?.kvs.into_iter().next())
}

/// Waits for the next apply on this member.
pub async fn next_apply(
    applied: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<raft_core::state_machine::events::Applied>>,
) -> Result<(), Status> {
    match applied.recv().await {
        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Ok(()),
        Err(tokio::sync::broadcast::error::RecvError::Closed) => Err(EtcdError::ServerStopped.to_status()),
    }
}

/// Waits until no key ahead of `mine` is left under `prefix`, waiting each time only for the
/// one just ahead.
pub async fn wait_turn<E: Engine>(ctx: &Ctx<E>, prefix: &[u8], mine: &KeyValue) -> Result<(), Status> {
    let store = ctx.node.store();
    loop {
        // Subscribed before the read: a delete after it is not missed.
        let (mut applied, _) = store.subscribe();
        let Some(before) = ahead(ctx, prefix, mine.create_revision).await? else { return Ok(()) };
        loop {
            // Any apply may be the delete of the key ahead.
            next_apply(&mut applied).await?;
            let still = read(ctx, RangeRequest { key: before.key.clone(), ..Default::default() }).await?;
            if still.kvs.first().is_none_or(|kv| kv.create_revision != before.create_revision) {
                break;
            }
        }
    }
}

/// Whether `mine` still holds its place: the key is there as created and its lease is alive
/// at the leader now. Returns the revision read at.
pub async fn still_holds<E: Engine>(ctx: &Ctx<E>, mine: &KeyValue) -> Result<Option<i64>, Status> {
    #[cfg(feature = "planted-bugs")]
    if ctx.node.planted().lock_grant_unchecked {
        return Ok(Some(ctx.node.store().revision()));
    }
    let now = read(ctx, RangeRequest { key: mine.key.clone(), ..Default::default() }).await?;
    let holds = now.kvs.first().is_some_and(|kv| kv.create_revision == mine.create_revision);
    let alive = ctx.node.lease_time_to_live(mine.lease, false).await.map_err(error::node)?.is_some();
    Ok((holds && alive).then(|| now.header.map_or(0, |h| h.revision)))
}
