//! Installing a snapshot sent by the leader: storing its file, then replacing the whole state
//! with it under the torn mark.

use std::io::Seek;

use super::format;
use super::meta::{load_meta, sm_read_err, sm_write_err, SM_TREES};
use super::recovery::{clear_trees, imported_base, mark_torn};
use super::KvStore;
use crate::engine::{Batch, Engine};
use crate::mvcc::index::KeyIndex;
use crate::snapshot_data::SnapshotData;
use crate::typ::{SnapshotMeta, StorageError};

/// The file an installed snapshot is stored in: named by the last entry it covers and the
/// moment it is installed, so that installing the same snapshot again never writes over the
/// file the current snapshot is in.
pub(super) fn installed_file_name(meta: &SnapshotMeta) -> String {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    match meta.last_log_id {
        Some(l) => format!("snapshot-{}-{}-{at:x}", l.leader_id.term, l.index),
        None => format!("snapshot-empty-{at:x}"),
    }
}

/// Bytes a snapshot's import writes between flushes of the engine.
const FLUSH_EVERY: usize = 4 << 20;

/// Replaces the state machine's trees and the key index with the snapshot stored in `file`,
/// streamed from the file in parts. The caller holds the torn mark: a crash part way is
/// restored again.
pub(super) fn load_snapshot<E: Engine>(
    engine: &E,
    index: &KeyIndex,
    meta: &SnapshotMeta,
    file: &str,
) -> Result<(), StorageError> {
    let read_err = |e: std::io::Error| {
        StorageError::from(crate::typ::StorageError::read_snapshot(Some(meta.signature()), crate::typ::err_source(&e)))
    };
    let missing = || {
        let what = format!("the snapshot's file {file} is missing");
        read_err(std::io::Error::new(std::io::ErrorKind::NotFound, what))
    };
    let mut data = engine.open_file(file).map_err(|e| read_err(std::io::Error::other(e)))?.ok_or_else(missing)?;
    clear_trees(engine, &SM_TREES)?;
    index.clear();
    // A failed write is the engine's error, not the snapshot's: keep it as it was.
    let mut failed_write = None;
    let mut unflushed = 0;
    let mut derive = |k: &[u8], v: &[u8]| index.derive(k, v).map_err(std::io::Error::other);
    let imported = format::import(
        &mut data,
        &SM_TREES,
        &mut |batch| {
            unflushed += batch.encoded_len();
            let mut written = engine.write_relaxed(batch);
            if written.is_ok() && unflushed >= FLUSH_EVERY {
                // sled keeps what was written since its last flush in memory.
                unflushed = 0;
                written = engine.flush();
            }
            written.map_err(|e| {
                let message = e.to_string();
                failed_write = Some(e);
                std::io::Error::other(message)
            })
        },
        &mut derive,
    );
    if let Some(e) = failed_write {
        return Err(sm_write_err(e));
    }
    imported.map_err(read_err)?;
    index.derive_lease_keys().map_err(sm_read_err)
}

impl<E: Engine> KvStore<E> {
    /// [`RaftStateMachine::install_snapshot`]'s work, blocking. A failure is published to the
    /// log store's purge waiting for this snapshot, which then fails too.
    pub(super) fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StorageError> {
        let installed = self.try_install(meta, data);
        if installed.is_err() {
            self.shared.snapshot.send_modify(|s| s.install_failed = true);
        }
        installed
    }

    /// Stores the received data as the snapshot's file, then replaces the state with it in
    /// parts, streamed from that file, under the torn mark: a crash part way restores the
    /// previous snapshot at the next start (whose file stays until this one is current), and
    /// the log from there, so the member is back on its previous state.
    fn try_install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let _history = self.history_exclusive();
        let mut gate = self.write_gate();
        let engine = &*self.shared.engine;
        let write_err = |e: crate::engine::EngineError| {
            crate::typ::StorageError::write_snapshot(Some(meta.signature()), crate::typ::err_source(&e))
        };
        // The file first: until the meta below points to it, it is an unused file.
        let file = installed_file_name(meta);
        match data.into_received() {
            Ok(received) => engine.store_received(&file, received).map_err(write_err)?,
            Err(mut other) => engine
                .put_file(&file, &mut |out| {
                    other.seek(std::io::SeekFrom::Start(0))?;
                    std::io::copy(&mut other, out).map(drop)
                })
                .map_err(write_err)?,
        }
        mark_torn(engine, &mut gate)?;
        if let Err(e) = load_snapshot(engine, &self.shared.index, meta, &file) {
            // What is stored is part of a snapshot: only a restart's restore may clear the mark.
            gate.apply_failed = true;
            return Err(e);
        }
        // The data holds exactly the versions at or below its revision, as compacted then, so it
        // is the base of the next build and start, as a snapshot built here would be.
        let base = imported_base(engine)?;
        self.persist_snapshot(meta, &file, Batch::default(), base)?;
        let mut fresh = load_meta(engine)?;
        // The snapshot's position is authoritative even if its content predates the meta keys.
        fresh.last_applied = meta.last_log_id;
        fresh.membership = meta.last_membership.clone();
        tracing::info!(
            snapshot = %file,
            revision = fresh.revision,
            "installed snapshot up to log {} in {:?}",
            meta.last_log_id.map_or(0, |l| l.index),
            started.elapsed()
        );
        let revision = fresh.revision;
        *self.shared.applied.lock() = fresh.last_applied;
        *gate = fresh;
        drop(gate);
        self.shared.revision.send_replace(revision);
        self.shared.events.publish_replaced(revision);
        self.shared.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
