//! The key-value family: Put, DeleteRange, Txn and Compact, applied with etcd's MVCC rules
//! ([`crate::mvcc::write`]).

use kv_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, TxnRequest};

use crate::mvcc::view::Reader;
use crate::mvcc::write::Writer;
use crate::mvcc::MvccError;
use crate::request::WriteResponse;

pub(super) fn put<R: Reader + ?Sized>(w: &mut Writer<'_, '_, R>, r: &PutRequest) -> Result<WriteResponse, MvccError> {
    w.put(r).map(WriteResponse::Put)
}

pub(super) fn delete_range<R: Reader + ?Sized>(
    w: &mut Writer<'_, '_, R>,
    r: &DeleteRangeRequest,
) -> Result<WriteResponse, MvccError> {
    w.delete_range(r).map(WriteResponse::DeleteRange)
}

pub(super) fn txn<R: Reader + ?Sized>(w: &mut Writer<'_, '_, R>, r: &TxnRequest) -> Result<WriteResponse, MvccError> {
    w.txn(r).map(WriteResponse::Txn)
}

pub(super) fn compact<R: Reader + ?Sized>(
    w: &mut Writer<'_, '_, R>,
    r: &CompactionRequest,
) -> Result<WriteResponse, MvccError> {
    w.compact(r).map(WriteResponse::Compact)
}
