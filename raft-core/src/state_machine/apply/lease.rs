//! The lease family: grant, revoke (deleting the attached keys) and checkpoint, applied with
//! etcd's rules ([`crate::mvcc::lease`]).

use crate::mvcc::view::Reader;
use crate::mvcc::write::Writer;
use crate::mvcc::MvccError;
use crate::request::WriteResponse;

pub(super) fn grant<R: Reader + ?Sized>(
    w: &mut Writer<'_, '_, R>,
    id: i64,
    ttl: i64,
) -> Result<WriteResponse, MvccError> {
    w.lease_grant(id, ttl).map(WriteResponse::LeaseGrant)
}

pub(super) fn revoke<R: Reader + ?Sized>(w: &mut Writer<'_, '_, R>, id: i64) -> Result<WriteResponse, MvccError> {
    w.lease_revoke(id).map(WriteResponse::LeaseRevoke)
}

pub(super) fn checkpoint<R: Reader + ?Sized>(
    w: &mut Writer<'_, '_, R>,
    elapsed_ms: i64,
    remaining: &[(i64, i64)],
) -> Result<WriteResponse, MvccError> {
    w.lease_checkpoint(elapsed_ms, remaining).map(|()| WriteResponse::LeaseCheckpoint)
}
