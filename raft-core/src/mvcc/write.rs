//! The write side of the MVCC store: Put, DeleteRange, Txn and Compact with etcd's semantics,
//! applied to an [`Overlay`] so a whole Raft entry becomes one atomic engine batch.
//!
//! Revisions: each write request that changes something takes the next revision; all writes of
//! one request share it and are ordered by a sub-revision. A request that changes nothing
//! (a delete matching no key, a txn whose branch only reads) leaves the revision alone.

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::response_op::Response;
use kv_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use kv_api::EtcdError;

use super::index::{lease_key, Space};
use super::keys::{encode_key, history_key, index_value, revs_key, Record, Version};
use super::read::{self, KeyRange, Revisions};
use super::view::{Overlay, Reader};
use super::MvccError;
use std::collections::BTreeSet;
use std::ops::Bound;

/// Applies write requests on top of an overlay, tracking the revision as it advances.
pub struct Writer<'o, 'e, R: Reader + ?Sized> {
    pub view: &'o mut Overlay<'e, R>,
    pub revs: Revisions,
    /// Every version written, in order, when someone listens for changes (`None`: nobody
    /// does, and nothing is copied).
    pub changes: Option<Vec<Change>>,
}

/// One key's change, as apply made it: the version written (a tombstone for a delete, its
/// `mod_revision` and `sub` placing it) and the key's previous live version, if it had one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Vec<u8>,
    pub version: Record,
    pub prev: Option<Record>,
}

impl Change {
    /// Whether the change deleted the key.
    pub fn is_delete(&self) -> bool {
        self.version.is_tombstone()
    }
}

/// Context of the request being applied: its revision and the next sub-revision.
pub(super) struct Ctx {
    rev: i64,
    sub: i64,
}

pub(super) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

impl<R: Reader + ?Sized> Writer<'_, '_, R> {
    /// Runs `f` as one request: on error its writes are rolled back; when it wrote something
    /// the store moves to the next revision.
    pub(super) fn request<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Ctx) -> Result<T, MvccError>,
    ) -> Result<T, MvccError> {
        let sp = self.view.savepoint();
        let recorded = self.changes.as_ref().map_or(0, Vec::len);
        let mut ctx = Ctx { rev: self.revs.current + 1, sub: 0 };
        match f(self, &mut ctx) {
            Ok(v) => {
                if self.view.wrote_since(sp) {
                    self.revs.current = ctx.rev;
                }
                Ok(v)
            }
            Err(e) => {
                self.view.rollback(sp);
                if let Some(changes) = &mut self.changes {
                    changes.truncate(recorded);
                }
                Err(e)
            }
        }
    }

    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.request(|w, ctx| {
            let mut resp = w.put_in(ctx, req)?;
            resp.header = header(ctx.rev);
            Ok(resp)
        })
    }

    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        self.request(|w, ctx| {
            let mut resp = w.delete_in(ctx, req)?;
            let changed = resp.deleted > 0;
            resp.header = header(if changed { ctx.rev } else { w.revs.current });
            Ok(resp)
        })
    }

    pub fn txn(&mut self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        self.request(|w, ctx| {
            let sp = w.view.savepoint();
            let mut resp = w.txn_in(ctx, req)?;
            let changed = w.view.wrote_since(sp);
            resp.header = header(if changed { ctx.rev } else { w.revs.current });
            Ok(resp)
        })
    }

    /// Removes every version older than `revision` except each key's latest at or below it
    /// (and that one too when it is a tombstone). Visits only revisions since the last compaction.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, MvccError> {
        let target = req.revision;
        if target <= self.revs.compacted {
            return Err(EtcdError::Compacted.into());
        }
        if target > self.revs.current {
            return Err(EtcdError::FutureRevision.into());
        }
        let from = revs_key(self.revs.compacted.max(1), 0);
        let to = revs_key(target + 1, 0);
        let mut touched = BTreeSet::new();
        for item in self.view.scan(Space::Revs, Bound::Included(&from), Bound::Excluded(&to), false) {
            let (_, version) = item?;
            touched.insert(Version::decode(&version)?.key);
        }
        for key in touched {
            let enc = encode_key(&key);
            let upper = history_key(&key, target + 1);
            let mut versions = Vec::new();
            for item in self.view.scan(Space::History, Bound::Included(&enc), Bound::Excluded(&upper), false) {
                let (hk, sub) = item?;
                let rk = read::indexed(&hk, &sub)?;
                versions.push((hk, rk));
            }
            // The newest version at or below the target stays, unless it is a tombstone.
            let keep_last = match versions.last() {
                Some((_, rk)) => !read::version(&*self.view, rk)?.record.is_tombstone(),
                None => false,
            };
            let drop_n = versions.len() - usize::from(keep_last);
            for (hk, rk) in versions.into_iter().take(drop_n) {
                self.view.delete(Space::History, hk);
                self.view.delete(Space::Revs, rk.to_vec());
            }
        }
        self.revs.compacted = target;
        Ok(CompactionResponse { header: header(self.revs.current) })
    }

    fn write_version(&mut self, ctx: &mut Ctx, key: &[u8], rec: &Record, prev: Option<&Record>) {
        if let Some(changes) = &mut self.changes {
            changes.push(Change { key: key.to_vec(), version: rec.clone(), prev: prev.cloned() });
        }
        // The key leaves its previous version's lease and joins this version's.
        if let Some(p) = prev.filter(|p| p.lease != 0) {
            self.view.delete(Space::LeaseKeys, lease_key(p.lease, key));
        }
        if rec.lease != 0 && !rec.is_tombstone() {
            self.view.put(Space::LeaseKeys, lease_key(rec.lease, key), Vec::new());
        }
        self.view.put(Space::History, history_key(key, ctx.rev), index_value(ctx.sub));
        self.view.put(Space::Revs, revs_key(ctx.rev, ctx.sub).to_vec(), Version::encode(key, rec));
        if rec.is_tombstone() {
            self.view.delete(Space::Current, key.to_vec());
        } else {
            self.view.put(Space::Current, key.to_vec(), rec.encode());
        }
        ctx.sub += 1;
    }

    fn put_in(&mut self, ctx: &mut Ctx, req: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = read::latest(&*self.view, &KeyRange::Single(req.key.clone()))?.pop().map(|(_, r)| r);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(EtcdError::KeyNotFound.into());
        }
        let lease = if req.ignore_lease { prev.as_ref().map_or(0, |p| p.lease) } else { req.lease };
        if lease != 0 && self.view.get(Space::Leases, &lease.to_be_bytes())?.is_none() {
            return Err(EtcdError::LeaseNotFound.into());
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let rec = Record {
            create_revision: prev.as_ref().map_or(ctx.rev, |p| p.create_revision),
            mod_revision: ctx.rev,
            sub: ctx.sub,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        self.write_version(ctx, &req.key, &rec, prev.as_ref());
        Ok(PutResponse {
            header: None,
            prev_kv: if req.prev_kv { prev.map(|p| p.to_kv(&req.key, false)) } else { None },
        })
    }

    pub(super) fn delete_in(
        &mut self,
        ctx: &mut Ctx,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        let victims = read::latest(&*self.view, &KeyRange::new(&req.key, &req.range_end))?;
        let mut prev_kvs = Vec::new();
        for (key, prev) in &victims {
            let tomb = Record { mod_revision: ctx.rev, sub: ctx.sub, ..Record::default() };
            self.write_version(ctx, key, &tomb, Some(prev));
            if req.prev_kv {
                prev_kvs.push(prev.to_kv(key, false));
            }
        }
        Ok(DeleteRangeResponse { header: None, deleted: victims.len() as i64, prev_kvs })
    }

    fn txn_in(&mut self, ctx: &mut Ctx, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.op_in(ctx, op)?);
        }
        Ok(TxnResponse { header: None, succeeded, responses })
    }

    fn op_in(&mut self, ctx: &mut Ctx, op: &RequestOp) -> Result<ResponseOp, MvccError> {
        let response = match &op.request {
            Some(Request::RequestRange(r)) => {
                // Reads inside a txn see the txn's earlier writes, at the pre-txn revision.
                let mut resp = read::range_in(&*self.view, r, self.revs, true)?;
                resp.header = header(self.revs.current);
                Response::ResponseRange(resp)
            }
            Some(Request::RequestPut(r)) => {
                let mut resp = self.put_in(ctx, r)?;
                resp.header = header(ctx.rev);
                Response::ResponsePut(resp)
            }
            Some(Request::RequestDeleteRange(r)) => {
                let mut resp = self.delete_in(ctx, r)?;
                resp.header = header(ctx.rev);
                Response::ResponseDeleteRange(resp)
            }
            Some(Request::RequestTxn(r)) => {
                let mut resp = self.txn_in(ctx, r)?;
                resp.header = header(ctx.rev);
                Response::ResponseTxn(resp)
            }
            None => return Err(EtcdError::KeyNotFound.into()),
        };
        Ok(ResponseOp { response: Some(response) })
    }

    /// etcd's compare: every existing key in the range must satisfy it; with no key, VALUE
    /// compares false and other targets compare against zero.
    fn compare(&self, c: &Compare) -> Result<bool, MvccError> {
        let target = CompareTarget::try_from(c.target)
            .map_err(|_| EtcdError::InvalidArgument(format!("invalid compare target {}", c.target)))?;
        let result = CompareResult::try_from(c.result)
            .map_err(|_| EtcdError::InvalidArgument(format!("invalid compare result {}", c.result)))?;
        let found = read::latest(&*self.view, &KeyRange::new(&c.key, &c.range_end))?;
        if found.is_empty() {
            return Ok(target != CompareTarget::Value && compare_one(&Record::default(), target, result, c));
        }
        Ok(found.iter().all(|(_, rec)| compare_one(rec, target, result, c)))
    }
}

fn compare_one(rec: &Record, target: CompareTarget, result: CompareResult, c: &Compare) -> bool {
    use std::cmp::Ordering;
    let given_i64 = |v: Option<i64>| v.unwrap_or(0);
    let ord = match target {
        CompareTarget::Value => {
            let given = match &c.target_union {
                Some(TargetUnion::Value(v)) => v.as_slice(),
                _ => &[],
            };
            rec.value.as_slice().cmp(given)
        }
        CompareTarget::Version => rec.version.cmp(&given_i64(match c.target_union {
            Some(TargetUnion::Version(v)) => Some(v),
            _ => None,
        })),
        CompareTarget::Create => rec.create_revision.cmp(&given_i64(match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => Some(v),
            _ => None,
        })),
        CompareTarget::Mod => rec.mod_revision.cmp(&given_i64(match c.target_union {
            Some(TargetUnion::ModRevision(v)) => Some(v),
            _ => None,
        })),
        CompareTarget::Lease => rec.lease.cmp(&given_i64(match c.target_union {
            Some(TargetUnion::Lease(v)) => Some(v),
            _ => None,
        })),
    };
    match result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
        CompareResult::NotEqual => ord != Ordering::Equal,
    }
}
