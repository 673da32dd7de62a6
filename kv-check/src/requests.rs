//! The register workload's requests and what its answers mean, on the wire, built once for the
//! simulation and jepsen/: a put of a unique value, a compare-and-set (a Txn comparing the
//! value, or the key's absence), a read at a client's level, and the audit's read of every
//! register key at one revision.

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{
    Compare, Consistency, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader, TxnRequest,
};

use crate::history::{parse_value, Level, STALENESS_BOUND};

pub fn put(key: &str, value: u64) -> PutRequest {
    PutRequest { key: key.into(), value: value.to_string().into(), ..Default::default() }
}

/// Puts `value` if `key` holds `expect` (None: if the key is absent).
pub fn cas(key: &str, expect: Option<u64>, value: u64) -> TxnRequest {
    let compare = match expect {
        Some(v) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.into(),
            target_union: Some(TargetUnion::Value(v.to_string().into())),
            ..Default::default()
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.into(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        },
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp { request: Some(Request::RequestPut(put(key, value))) }],
        failure: vec![],
    }
}

/// A read of `key` at `level`; `min_revision` is a session client's token (0 otherwise).
pub fn get(key: &str, level: Level, min_revision: i64) -> RangeRequest {
    let (consistency, max_staleness_ms) = match level {
        Level::Linearizable => (Consistency::Linearizable, 0),
        Level::Lease => (Consistency::Lease, 0),
        Level::Session => (Consistency::Session, 0),
        Level::Bounded => (Consistency::Bounded, STALENESS_BOUND.as_millis() as i64),
        Level::Serializable => (Consistency::Serializable, 0),
    };
    RangeRequest {
        key: key.into(),
        consistency: consistency as i32,
        min_revision,
        max_staleness_ms,
        ..Default::default()
    }
}

/// A read's answer: the value and mod revision seen (None: absent).
pub fn seen(r: &RangeResponse) -> Option<(u64, i64)> {
    r.kvs.first().map(|kv| (parse_value(&kv.value), kv.mod_revision))
}

/// The revision an answer's header carries (0 without a header).
pub fn revision(h: Option<&ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision)
}

/// Every key from `first_key` on, at `revision` (0: the latest), read from the member asked
/// without a quorum round: the audit compares members one by one.
pub fn all_keys(first_key: &str, revision: i64) -> RangeRequest {
    RangeRequest {
        key: first_key.into(),
        range_end: vec![0xff],
        revision,
        consistency: Consistency::Serializable as i32,
        ..Default::default()
    }
}

/// The keys of an [`all_keys`] answer with their value and mod revision.
pub fn keys_of(r: &RangeResponse) -> Vec<(String, u64, i64)> {
    r.kvs
        .iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), parse_value(&kv.value), kv.mod_revision))
        .collect()
}
