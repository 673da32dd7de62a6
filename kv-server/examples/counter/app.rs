//! The example application's logic, written once against [`KvApi`]: a shared counter bumped
//! with compare-and-swap, which must never lose an increment however many bump it at once.

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest};
use kv_api::{Consistency, KvApi};

/// Reads the counter at `key` (0 when absent).
pub async fn read<A: KvApi>(api: &A, key: &str) -> Result<i64, A::Error> {
    let v = api.get(key, Consistency::Linearizable).await?;
    Ok(v.as_deref().map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap_or(0)))
}

/// Adds one to the counter at `key` and returns the new value: read, then write only if the
/// value is still the one read (a Txn), else try again.
pub async fn bump<A: KvApi>(api: &A, key: &str) -> Result<i64, A::Error> {
    loop {
        let current = api.get(key, Consistency::Linearizable).await?;
        let n: i64 = current.as_deref().map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap_or(0));
        let (target, union) = match current {
            Some(v) => (CompareTarget::Value, TargetUnion::Value(v)),
            // Absent: its version is 0.
            None => (CompareTarget::Version, TargetUnion::Version(0)),
        };
        let guard = Compare {
            result: CompareResult::Equal as i32,
            target: target as i32,
            key: key.into(),
            target_union: Some(union),
            ..Default::default()
        };
        let put = PutRequest { key: key.into(), value: (n + 1).to_string().into_bytes(), ..Default::default() };
        let txn = TxnRequest {
            compare: vec![guard],
            success: vec![RequestOp { request: Some(Request::RequestPut(put)) }],
            failure: vec![],
        };
        if api.txn(txn).await?.succeeded {
            return Ok(n + 1);
        }
    }
}
