//! Checks etcd makes on a request before it is proposed: they need no state, so a bad request
//! is refused at once, never reaches the log, and costs the cluster nothing.

use std::collections::BTreeSet;

use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use kv_api::EtcdError;

use super::read::KeyRange;

/// Size limits from the server's flags (etcd's `--max-request-bytes`, `--max-txn-ops`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_bytes: 1536 * 1024, max_txn_ops: 128 }
    }
}

/// The encoded size of a request must fit `max_request_bytes`.
pub fn size(encoded_len: usize, limits: &Limits) -> Result<(), EtcdError> {
    if encoded_len > limits.max_request_bytes {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

pub fn range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::KeyNotProvided);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::KeyNotProvided);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::KeyNotProvided);
    }
    Ok(())
}

/// etcd's txn checks: op count against the limit (nested txns count against what is left),
/// each op valid, and no key written twice (two puts of a key, or a put inside a deleted range)
/// within a branch, nested txns included.
pub fn txn(t: &TxnRequest, limits: &Limits) -> Result<(), EtcdError> {
    txn_budget(t, limits.max_txn_ops)?;
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(EtcdError::KeyNotProvided);
        }
    }
    for ops in [&t.success, &t.failure] {
        for op in ops.iter() {
            op_valid(op, limits)?;
        }
        branch_writes(ops)?;
    }
    Ok(())
}

fn txn_budget(t: &TxnRequest, budget: usize) -> Result<(), EtcdError> {
    let n = t.compare.len().max(t.success.len()).max(t.failure.len());
    if n > budget {
        return Err(EtcdError::TooManyTxnOps);
    }
    for op in t.success.iter().chain(&t.failure) {
        if let Some(Request::RequestTxn(inner)) = &op.request {
            txn_budget(inner, budget - n)?;
        }
    }
    Ok(())
}

fn op_valid(op: &RequestOp, limits: &Limits) -> Result<(), EtcdError> {
    match &op.request {
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(r)) => put(r),
        Some(Request::RequestDeleteRange(r)) => delete_range(r),
        Some(Request::RequestTxn(t)) => txn(t, limits),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// The keys put and ranges deleted by a branch, nested txns folded in, failing on a duplicate,
/// in etcd's order (`checkIntervals`): this level's deletes first; then each nested txn's
/// then-puts and else-puts against what is known so far (a key in both then and else is fine,
/// only one runs), merging its deletes afterwards; this level's puts last.
fn branch_writes(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<KeyRange>), EtcdError> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts = BTreeSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else { continue };
        let (puts_then, dels_then) = branch_writes(&t.success)?;
        let (puts_else, dels_else) = branch_writes(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        if let Some(Request::RequestPut(p)) = &op.request {
            if puts.contains(&p.key) || deleted(&dels, &p.key) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(p.key.clone());
        }
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp { request: Some(Request::RequestPut(PutRequest { key: k.into(), ..Default::default() })) }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn duplicate_keys_are_found_like_etcd() {
        let l = Limits::default();
        let t = |success| TxnRequest { success, ..Default::default() };
        assert_eq!(txn(&t(vec![put_op("a"), put_op("a")]), &l), Err(EtcdError::DuplicateKey));
        assert_eq!(txn(&t(vec![put_op("b"), del_op("a", "c")]), &l), Err(EtcdError::DuplicateKey));
        assert_eq!(txn(&t(vec![del_op("a", "c"), del_op("b", "d")]), &l), Ok(()));
        let nested = TxnRequest { success: vec![put_op("x")], failure: vec![put_op("x")], ..Default::default() };
        let with_nested =
            |outer: RequestOp| t(vec![outer, RequestOp { request: Some(Request::RequestTxn(nested.clone())) }]);
        assert_eq!(txn(&with_nested(put_op("y")), &l), Ok(()));
        assert_eq!(txn(&with_nested(put_op("x")), &l), Err(EtcdError::DuplicateKey));
        // A nested txn may put a key in one branch and delete it in the other (etcd accepts).
        let put_or_del =
            TxnRequest { success: vec![put_op("k")], failure: vec![del_op("k", "")], ..Default::default() };
        let nested = RequestOp { request: Some(Request::RequestTxn(put_or_del)) };
        assert_eq!(txn(&t(vec![nested.clone()]), &l), Ok(()));
        // But an outer delete covering a nested put is a duplicate.
        assert_eq!(txn(&t(vec![del_op("a", "z"), nested]), &l), Err(EtcdError::DuplicateKey));
    }

    #[test]
    fn op_count_is_limited_including_nested() {
        let l = Limits { max_txn_ops: 3, ..Limits::default() };
        let ops = |n| (0..n).map(|i| put_op(&format!("k{i}"))).collect::<Vec<_>>();
        assert!(txn(&TxnRequest { success: ops(3), ..Default::default() }, &l).is_ok());
        assert_eq!(txn(&TxnRequest { failure: ops(4), ..Default::default() }, &l), Err(EtcdError::TooManyTxnOps));
    }
}
