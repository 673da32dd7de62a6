//! The state-machine meta: the keys it is stored under in the `SmMeta` and `Snapshot` trees,
//! the in-memory copy every apply updates, and how it is read and written.

use serde::Serialize;

use crate::engine::{KvEngine, Tree};
use crate::mvcc::index::Space;
use crate::mvcc::read::Revisions;
use crate::mvcc::view::{Overlay, Reader};
use crate::typ::{LogId, SnapshotMeta, StorageError, StoredMembership};

pub(super) const REVISION: &[u8] = b"revision";
pub(super) const COMPACTED: &[u8] = b"compacted";
pub(super) const LAST_APPLIED: &[u8] = b"last_applied";
pub(super) const MEMBERSHIP: &[u8] = b"membership";
pub(super) const CLUSTER_ID: &[u8] = b"cluster_id";
/// Present while the stored state may hold part of an apply (see the module doc).
pub(super) const TORN: &[u8] = b"torn";
pub(super) const SNAP_META: &[u8] = b"meta";
/// The name of the file holding the current snapshot's data.
pub(super) const SNAP_FILE: &[u8] = b"file";
/// The revision and compacted revision the current snapshot was built at, when this member
/// built it: the base of the next build (see [`super::format::export`]).
pub(super) const SNAP_BASE: &[u8] = b"base";

/// The meta of a snapshot of the state machine in `meta`'s state.
pub(super) fn snapshot_meta_of(meta: &SmMeta) -> SnapshotMeta {
    SnapshotMeta { last_log_id: meta.last_applied, last_membership: meta.membership.clone() }
}

/// Trees that make up the state machine, all of which a snapshot carries (the key index is
/// derived from `KvRevs` when it is imported).
pub(super) const SM_TREES: [Tree; 4] = [Tree::KvRevs, Tree::SmMeta, Tree::Members, Tree::Leases];

/// The state-machine meta, cached in memory and written with every apply.
#[derive(Clone, Debug, Default)]
pub struct SmMeta {
    /// etcd's current revision. A fresh store is at 1, like etcd.
    pub revision: i64,
    /// Highest compacted revision (0 = never compacted).
    pub compacted: i64,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// 0 until set at bootstrap.
    pub cluster_id: u64,
    /// The stored state is marked torn: applies may write op by op until it is flushed whole.
    pub torn: bool,
    /// An apply failed part way: what is stored is not a state the log can be applied to, so
    /// the torn mark must stay until a restart restores the snapshot (see
    /// [`super::KvStore::flush_whole`]).
    pub apply_failed: bool,
}

/// Where the stored snapshot ends: the log below it may be purged
/// ([`super::KvStore::stored_snapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The last log id the stored snapshot covers (`None`: no snapshot).
    pub last: Option<LogId>,
    /// Installing a snapshot from the leader failed; the member is stopping.
    pub install_failed: bool,
}

impl SmMeta {
    pub fn revisions(&self) -> Revisions {
        Revisions { current: self.revision, compacted: self.compacted }
    }
}

pub(super) fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageError::read_state_machine(crate::typ::err_source(&e))
}

pub(super) fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageError::write_state_machine(crate::typ::err_source(&e))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, StorageError> {
    crate::codec::decode(v).map_err(|e| sm_read_err(*e))
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialization cannot fail")
}

pub(super) fn i64_at(engine: &(impl KvEngine + ?Sized), key: &[u8]) -> Result<Option<i64>, StorageError> {
    engine.get(Tree::SmMeta, key).map_err(sm_read_err)?.map(|v| decode::<i64>(&v)).transpose()
}

pub(super) fn load_meta<E: KvEngine + ?Sized>(engine: &E) -> Result<SmMeta, StorageError> {
    let get = |k: &[u8]| engine.get(Tree::SmMeta, k).map_err(sm_read_err);
    Ok(SmMeta {
        revision: i64_at(engine, REVISION)?.unwrap_or(1),
        compacted: i64_at(engine, COMPACTED)?.unwrap_or(0),
        last_applied: get(LAST_APPLIED)?.map(|v| decode(&v)).transpose()?.flatten(),
        membership: get(MEMBERSHIP)?.map(|v| decode(&v)).transpose()?.unwrap_or_default(),
        cluster_id: get(CLUSTER_ID)?.map(|v| decode(&v)).transpose()?.unwrap_or(0),
        torn: get(TORN)?.is_some(),
        apply_failed: false,
    })
}

/// Writes the meta that apply owns into `batch`, with the changes it produced.
pub(super) fn meta_ops(batch: &mut Overlay<'_, impl Reader + ?Sized>, m: &SmMeta) {
    batch.put(Space::Meta, REVISION.to_vec(), encode(&m.revision));
    batch.put(Space::Meta, COMPACTED.to_vec(), encode(&m.compacted));
    batch.put(Space::Meta, LAST_APPLIED.to_vec(), encode(&m.last_applied));
    batch.put(Space::Meta, MEMBERSHIP.to_vec(), encode(&m.membership));
}
