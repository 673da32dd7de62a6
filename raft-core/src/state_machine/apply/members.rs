//! The members family: a member's published attributes (name, client URLs), which MemberList
//! and the leader hint read.

use super::super::meta::encode;
use crate::mvcc::index::Space;
use crate::mvcc::view::Reader;
use crate::mvcc::write::Writer;
use crate::mvcc::MvccError;
use crate::request::{MemberAttrs, WriteResponse};

pub(super) fn publish<R: Reader + ?Sized>(
    w: &mut Writer<'_, '_, R>,
    m: &MemberAttrs,
) -> Result<WriteResponse, MvccError> {
    w.view.put(Space::Members, m.id.to_be_bytes().to_vec(), encode(m));
    Ok(WriteResponse::PublishMember)
}
