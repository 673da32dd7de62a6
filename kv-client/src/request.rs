//! Builders for each request, so callers say what they mean (`Get::prefix("app/").limit(10)`)
//! instead of filling protobuf fields. Each converts into the etcd message it builds, so every
//! [`crate::Client`] call takes either.

use std::time::Duration;

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use kv_api::Consistency;

use crate::prefix_end;

/// A Range.
#[derive(Clone, Debug, Default)]
pub struct Get(RangeRequest);

impl Get {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> Get {
        Get(RangeRequest { key: key.into(), ..Default::default() })
    }
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Get {
        let key = prefix.into();
        Get(RangeRequest { range_end: prefix_end(&key), key, ..Default::default() })
    }
    /// Keys in [`from`, `to`).
    pub fn range(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) -> Get {
        Get(RangeRequest { key: from.into(), range_end: to.into(), ..Default::default() })
    }
    /// Every key at or after `from`.
    pub fn from_key(from: impl Into<Vec<u8>>) -> Get {
        Get(RangeRequest { key: from.into(), range_end: vec![0], ..Default::default() })
    }
    pub fn limit(mut self, n: i64) -> Get {
        self.0.limit = n;
        self
    }
    /// Read as of this revision.
    pub fn revision(mut self, rev: i64) -> Get {
        self.0.revision = rev;
        self
    }
    pub fn keys_only(mut self) -> Get {
        self.0.keys_only = true;
        self
    }
    pub fn count_only(mut self) -> Get {
        self.0.count_only = true;
        self
    }
    pub fn sort(mut self, target: SortTarget, order: SortOrder) -> Get {
        self.0.sort_target = target as i32;
        self.0.sort_order = order as i32;
        self
    }
    pub fn consistency(mut self, level: Consistency) -> Get {
        self.0.consistency = level as i32;
        self.0.serializable = level == Consistency::Serializable;
        self
    }
    /// A session read that must see at least `rev` (the client adds its own token anyway).
    pub fn min_revision(mut self, rev: i64) -> Get {
        self.0.consistency = Consistency::Session as i32;
        self.0.min_revision = rev;
        self
    }
    /// A bounded read: at most `bound` behind the leader.
    pub fn max_staleness(mut self, bound: Duration) -> Get {
        self.0.consistency = Consistency::Bounded as i32;
        self.0.max_staleness_ms = bound.as_millis().max(1) as i64;
        self
    }
}

impl From<Get> for RangeRequest {
    fn from(g: Get) -> RangeRequest {
        g.0
    }
}

/// A Put.
#[derive(Clone, Debug, Default)]
pub struct Put(PutRequest);

impl Put {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Put {
        Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
    }
    /// Return the previous key-value pair.
    pub fn prev_kv(mut self) -> Put {
        self.0.prev_kv = true;
        self
    }
    /// Attach the key to lease `id` (0: to none; a put without this detaches it).
    pub fn lease(mut self, id: i64) -> Put {
        self.0.lease = id;
        self
    }
    /// Keep the current value (only the lease changes); fails if the key does not exist.
    pub fn ignore_value(mut self) -> Put {
        self.0.value.clear();
        self.0.ignore_value = true;
        self
    }
}

impl From<Put> for PutRequest {
    fn from(p: Put) -> PutRequest {
        p.0
    }
}

/// A DeleteRange.
#[derive(Clone, Debug, Default)]
pub struct Delete(DeleteRangeRequest);

impl Delete {
    pub fn key(key: impl Into<Vec<u8>>) -> Delete {
        Delete(DeleteRangeRequest { key: key.into(), ..Default::default() })
    }
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Delete {
        let key = prefix.into();
        Delete(DeleteRangeRequest { range_end: prefix_end(&key), key, ..Default::default() })
    }
    pub fn range(from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) -> Delete {
        Delete(DeleteRangeRequest { key: from.into(), range_end: to.into(), ..Default::default() })
    }
    /// Return the deleted pairs.
    pub fn prev_kv(mut self) -> Delete {
        self.0.prev_kv = true;
        self
    }
}

impl From<Delete> for DeleteRangeRequest {
    fn from(d: Delete) -> DeleteRangeRequest {
        d.0
    }
}

/// One compare of a [`Txn`].
#[derive(Clone, Debug)]
pub struct Cmp(Compare);

/// How a [`Cmp`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Equal,
    NotEqual,
    Less,
    Greater,
}

impl Cmp {
    fn new(key: impl Into<Vec<u8>>, op: Op, target: CompareTarget, union: TargetUnion) -> Cmp {
        let result = match op {
            Op::Equal => CompareResult::Equal,
            Op::NotEqual => CompareResult::NotEqual,
            Op::Less => CompareResult::Less,
            Op::Greater => CompareResult::Greater,
        };
        Cmp(Compare {
            result: result as i32,
            target: target as i32,
            key: key.into(),
            target_union: Some(union),
            ..Default::default()
        })
    }
    pub fn value(key: impl Into<Vec<u8>>, op: Op, value: impl Into<Vec<u8>>) -> Cmp {
        Cmp::new(key, op, CompareTarget::Value, TargetUnion::Value(value.into()))
    }
    /// The key's version (0: the key does not exist).
    pub fn version(key: impl Into<Vec<u8>>, op: Op, version: i64) -> Cmp {
        Cmp::new(key, op, CompareTarget::Version, TargetUnion::Version(version))
    }
    pub fn create_revision(key: impl Into<Vec<u8>>, op: Op, rev: i64) -> Cmp {
        Cmp::new(key, op, CompareTarget::Create, TargetUnion::CreateRevision(rev))
    }
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: Op, rev: i64) -> Cmp {
        Cmp::new(key, op, CompareTarget::Mod, TargetUnion::ModRevision(rev))
    }
}

/// A Txn: if every compare holds, the `and_then` requests, else the `or_else` ones.
#[derive(Clone, Debug, Default)]
pub struct Txn(TxnRequest);

/// A request inside a [`Txn`].
#[derive(Clone, Debug)]
pub enum TxnOp {
    Get(Get),
    Put(Put),
    Delete(Delete),
    Txn(Txn),
}

impl From<TxnOp> for RequestOp {
    fn from(op: TxnOp) -> RequestOp {
        let request = match op {
            TxnOp::Get(g) => Request::RequestRange(g.into()),
            TxnOp::Put(p) => Request::RequestPut(p.into()),
            TxnOp::Delete(d) => Request::RequestDeleteRange(d.into()),
            TxnOp::Txn(t) => Request::RequestTxn(t.into()),
        };
        RequestOp { request: Some(request) }
    }
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, compares: impl IntoIterator<Item = Cmp>) -> Txn {
        self.0.compare.extend(compares.into_iter().map(|c| c.0));
        self
    }
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.0.success.extend(ops.into_iter().map(RequestOp::from));
        self
    }
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Txn {
        self.0.failure.extend(ops.into_iter().map(RequestOp::from));
        self
    }
}

impl From<Txn> for TxnRequest {
    fn from(t: Txn) -> TxnRequest {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_fields_etcd_expects() {
        let r: RangeRequest = Get::prefix("app/").limit(10).consistency(Consistency::Serializable).into();
        assert_eq!(
            (r.key.as_slice(), r.range_end.as_slice(), r.limit, r.serializable),
            (&b"app/"[..], &b"app0"[..], 10, true)
        );
        let r: RangeRequest = Get::key("k").max_staleness(Duration::from_millis(250)).into();
        assert_eq!((r.consistency, r.max_staleness_ms), (Consistency::Bounded as i32, 250));
        let r: RangeRequest = Get::from_key("m").min_revision(7).into();
        assert_eq!((r.range_end, r.consistency, r.min_revision), (vec![0], Consistency::Session as i32, 7));
        let p: PutRequest = Put::new("k", "v").prev_kv().into();
        assert!(p.prev_kv && p.value == b"v");
        let d: DeleteRangeRequest = Delete::prefix("a").prev_kv().into();
        assert_eq!(d.range_end, b"b");
        let t: TxnRequest = Txn::new()
            .when([Cmp::version("k", Op::Equal, 0)])
            .and_then([TxnOp::Put(Put::new("k", "1"))])
            .or_else([TxnOp::Get(Get::key("k"))])
            .into();
        assert_eq!((t.compare.len(), t.success.len(), t.failure.len()), (1, 1, 1));
        assert_eq!(t.compare[0].target_union, Some(TargetUnion::Version(0)));
    }
}
