//! Crash recovery of the state machine: the torn mark that apply and install set before they
//! write op by op, taking a torn state back to the stored snapshot, and building the key index
//! from the stored versions at open. (Why a state can be torn: see the module doc of
//! [`super`].)

use std::ops::Bound;

use super::format;
use super::install::load_snapshot;
use super::meta::{
    decode, encode, i64_at, sm_read_err, sm_write_err, SmMeta, CLUSTER_ID, COMPACTED, LAST_APPLIED, MEMBERSHIP,
    REVISION, SM_TREES, SNAP_BASE, SNAP_FILE, SNAP_META, TORN,
};
use crate::engine::{Batch, Engine, KvEngine, Tree};
use crate::mvcc::index::KeyIndex;
use crate::typ::{SnapshotMeta, StorageError};

/// Ops per write when a large state is rewritten in parts (cleared, imported, derived), so a
/// large store is never held in one batch.
pub(super) const PART: usize = 1 << 16;

/// Deletes every pair of `trees`, in parts, but the torn mark and the cluster id: the caller
/// writes op by op under the torn mark, which must stay until the state is whole again, and
/// the cluster id is set once, at bootstrap, never by a snapshot.
pub(super) fn clear_trees<E: KvEngine + ?Sized>(engine: &E, trees: &[Tree]) -> Result<(), StorageError> {
    for &tree in trees {
        let mut batch = Batch::default();
        for item in engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false) {
            let key = item.map_err(sm_read_err)?.0;
            if tree == Tree::SmMeta && (key == TORN || key == CLUSTER_ID) {
                continue;
            }
            batch.delete(tree, key);
            if batch.ops.len() >= PART {
                engine.write_relaxed(std::mem::take(&mut batch)).map_err(sm_write_err)?;
            }
        }
        engine.write_relaxed(batch).map_err(sm_write_err)?;
    }
    Ok(())
}

/// Takes a torn stored state back to the stored snapshot, or to the empty state when there is
/// none (then no entry was ever purged), durably; openraft applies the log from there. Written
/// in parts under the torn mark: a crash during it only means it runs again.
pub(super) fn restore<E: Engine>(engine: &E, index: &KeyIndex) -> Result<(), StorageError> {
    let snapshot: Option<SnapshotMeta> =
        engine.get(Tree::Snapshot, SNAP_META).map_err(sm_read_err)?.map(|m| decode(&m)).transpose()?;
    let cluster_id = engine.get(Tree::SmMeta, CLUSTER_ID).map_err(sm_read_err)?;
    let mut batch = Batch::default();
    match &snapshot {
        Some(meta) => {
            let name = engine.get(Tree::Snapshot, SNAP_FILE).map_err(sm_read_err)?.unwrap_or_default();
            load_snapshot(engine, index, meta, &String::from_utf8_lossy(&name))?;
            // The snapshot's position is authoritative even if its content predates the meta keys.
            batch.put(Tree::SmMeta, LAST_APPLIED, encode(&meta.last_log_id));
            batch.put(Tree::SmMeta, MEMBERSHIP, encode(&meta.last_membership));
        }
        None => {
            clear_trees(engine, &SM_TREES)?;
            index.clear();
        }
    }
    // The snapshot's meta section may carry a cluster id and a torn mark of its own.
    if let Some(id) = cluster_id {
        batch.put(Tree::SmMeta, CLUSTER_ID, id);
    }
    batch.delete(Tree::SmMeta, TORN);
    engine.write(batch).map_err(sm_write_err)?;
    engine.flush().map_err(sm_write_err)?;
    tracing::warn!(
        "the state machine may hold part of an apply (a crash): restored it to {}; the log is applied again from there",
        snapshot.map_or("the empty state".to_string(), |m| format!(
            "the snapshot up to log {}",
            m.last_log_id.map_or(0, |l| l.index)
        ))
    );
    Ok(())
}

/// Builds the key index (kept in memory only) from the stored versions. (A start that restores
/// the snapshot instead derives it as it imports it.) The versions come from the stored
/// snapshot where it can serve them, as for an export (see [`format::export`]): read from
/// sled, the whole history would stay in memory a while.
pub(super) fn rebuild_index<E: Engine>(engine: &E, index: &KeyIndex, meta: &SmMeta) -> Result<(), StorageError> {
    let Some(base) = stored_base(engine, meta) else {
        return derive_from(engine, index, meta, None);
    };
    derive_from(engine, index, meta, Some(base)).or_else(|e| {
        tracing::warn!("rebuilding the key index from the stored snapshot failed ({e}); reading every version instead");
        derive_from(engine, index, meta, None)
    })
}

/// [`rebuild_index`] from the versions [`format::versions`] yields.
fn derive_from<E: Engine>(
    engine: &E,
    index: &KeyIndex,
    meta: &SmMeta,
    base: Option<format::Base>,
) -> Result<(), StorageError> {
    index.clear();
    for item in format::versions(engine, meta.revision, base).map_err(sm_read_err)? {
        let (key, version) = item.map_err(sm_read_err)?;
        index.derive(&key, &version).map_err(sm_read_err)?;
    }
    index.derive_lease_keys().map_err(sm_read_err)
}

/// The stored snapshot's data as the base for reading the versions of the state in `meta`,
/// when this member built it and no compaction came since (see [`format::export`]). Anything
/// missing or unreadable means no base: every version is then read from the engine.
pub(super) fn stored_base<E: Engine>(engine: &E, meta: &SmMeta) -> Option<format::Base> {
    let (revision, compacted): (i64, i64) = decode(&engine.get(Tree::Snapshot, SNAP_BASE).ok()??).ok()?;
    if compacted != meta.compacted || revision > meta.revision {
        return None;
    }
    let name = engine.get(Tree::Snapshot, SNAP_FILE).ok()??;
    let data = engine.open_file(&String::from_utf8_lossy(&name)).ok()??;
    Some(format::Base { data, revision })
}

/// The revision and compacted revision that an imported snapshot's meta section set, if it
/// set both.
pub(super) fn imported_base<E: Engine>(engine: &E) -> Result<Option<(i64, i64)>, StorageError> {
    Ok(i64_at(engine, REVISION)?.zip(i64_at(engine, COMPACTED)?))
}

/// Marks the stored state torn, durably, before the first op-by-op write since it was flushed
/// whole (see the module doc); `gate` is the meta, held exclusively.
pub(super) fn mark_torn<E: Engine + ?Sized>(engine: &E, gate: &mut SmMeta) -> Result<(), StorageError> {
    if !gate.torn {
        let mut mark = Batch::default();
        mark.put(Tree::SmMeta, TORN, vec![1]);
        engine.write(mark).map_err(sm_write_err)?;
        engine.flush().map_err(sm_write_err)?;
        gate.torn = true;
    }
    Ok(())
}
