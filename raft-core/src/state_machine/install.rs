//! Installing a snapshot sent by the leader: checking and storing its file and making it the
//! current snapshot, then replacing the whole state with it under the torn mark, while Raft
//! goes on.

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

/// A read of snapshot `meta`'s data failed.
fn read_err(meta: &SnapshotMeta, e: std::io::Error) -> StorageError {
    crate::typ::StorageError::read_snapshot(Some(meta.signature()), crate::typ::err_source(&e))
}

/// The stored file `file` of snapshot `meta`, opened for reading.
fn open_snapshot<E: Engine>(
    engine: &E,
    meta: &SnapshotMeta,
    file: &str,
) -> Result<Box<dyn crate::snapshot_data::ReadSeek>, StorageError> {
    let missing = || {
        let what = format!("the snapshot's file {file} is missing");
        read_err(meta, std::io::Error::new(std::io::ErrorKind::NotFound, what))
    };
    engine.open_file(file).map_err(|e| read_err(meta, std::io::Error::other(e)))?.ok_or_else(missing)
}

/// Replaces the state machine's trees and the key index with the snapshot stored in `file`,
/// streamed from the file in parts. The caller holds the torn mark: a crash part way is
/// restored again.
pub(super) fn load_snapshot<E: Engine>(
    engine: &E,
    index: &KeyIndex,
    meta: &SnapshotMeta,
    file: &str,
) -> Result<(), StorageError> {
    let mut data = open_snapshot(engine, meta, file)?;
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
    imported.map_err(|e| read_err(meta, e))?;
    index.derive_lease_keys().map_err(sm_read_err)
}

/// Reads the snapshot stored in `file` through without writing anything: data cut short or
/// malformed is refused here, while the previous snapshot is still the current one, rather
/// than found by the import after the new one became current (a start would then have
/// nothing whole to restore).
fn check_file<E: Engine>(engine: &E, meta: &SnapshotMeta, file: &str) -> Result<(), StorageError> {
    format::check(&mut open_snapshot(engine, meta, file)?).map_err(|e| read_err(meta, e))
}

/// Marks an import under way ([`KvStore::importing`]) for as long as it lives, so that every
/// way out of the import, a failure or a panic included, ends the mark.
struct Importing<'a>(&'a tokio::sync::watch::Sender<bool>);

impl<'a> Importing<'a> {
    fn start(mark: &'a tokio::sync::watch::Sender<bool>) -> Self {
        mark.send_replace(true);
        Importing(mark)
    }
}

impl Drop for Importing<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl<E: Engine> KvStore<E> {
    /// [`RaftStateMachine::install_snapshot`]'s work. Returns once the snapshot is stored and
    /// current, durably; the state is then replaced from it while the gate is held (see
    /// [`KvStore::install_stages`]), off openraft's state-machine worker.
    ///
    /// Why not return after the import: openraft purges the log up to a snapshot only once its
    /// install returns, and runs no Raft command queued behind that purge, votes included. A
    /// member importing a large snapshot (seconds) then answered no vote: a leader dying
    /// meanwhile left the cluster without one until the import ended (docs/benchmarks.md).
    ///
    /// [`RaftStateMachine::install_snapshot`]: openraft::storage::RaftStateMachine::install_snapshot
    pub(super) async fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StorageError> {
        // The simulation runs on one thread: there the import runs before this returns.
        if cfg!(madsim) {
            let mut stored = None;
            self.install_stages(meta, data, |r| stored = Some(r));
            return stored.expect("install_stages reports whether the snapshot is stored");
        }
        let (stored_tx, stored_rx) = tokio::sync::oneshot::channel();
        let (store, meta) = (self.clone(), meta.clone());
        std::thread::Builder::new()
            .name("snapshot-import".into())
            .spawn(move || store.install_stages(&meta, data, |r| drop(stored_tx.send(r))))
            .map_err(|e| crate::typ::StorageError::write_snapshot(None, crate::typ::err_source(&e)))?;
        stored_rx.await.unwrap_or_else(|_| {
            let gone = std::io::Error::other("the snapshot import thread ended before storing the snapshot");
            Err(crate::typ::StorageError::write_snapshot(None, crate::typ::err_source(&gone)))
        })
    }

    /// Installs a snapshot in two stages, holding the history lock and the gate throughout so
    /// nothing reads or applies in between: first stores the data as the snapshot's file and
    /// makes it the current snapshot under the torn mark, durably, and reports that to `stored`;
    /// then replaces the state with it, streamed from the file. A crash in the second stage
    /// restores the new snapshot at the next start, as for any torn state; a failure there
    /// stops this store: it refuses reads, applies, builds and installs (see
    /// [`super::serving`]).
    fn install_stages(&self, meta: &SnapshotMeta, data: SnapshotData, stored: impl FnOnce(Result<(), StorageError>)) {
        let started = std::time::Instant::now();
        let _history = self.history_exclusive();
        let mut gate = self.write_gate();
        let file = installed_file_name(meta);
        // After a failed import (or apply) the state is partial: nothing more goes onto it.
        let current = super::serving(&gate).map_err(sm_write_err);
        if let Err(e) = current.and_then(|()| self.store_current(meta, data, &file, &mut gate)) {
            self.shared.snapshot.send_modify(|s| s.install_failed = true);
            return stored(Err(e));
        }
        stored(Ok(()));
        let _importing = Importing::start(&self.shared.importing);
        tracing::info!(
            snapshot = %file,
            "stored the snapshot up to log {} from the leader in {:?}; importing it",
            meta.last_log_id.map_or(0, |l| l.index),
            started.elapsed()
        );
        let engine = &*self.shared.engine;
        let import = || {
            // Tests hold the import here to observe what waits for it, or make it fail.
            fail::fail_point!("snapshot-import");
            load_snapshot(engine, &self.shared.index, meta, &file)
                // The data holds exactly the versions at or below its revision, as compacted
                // then, so it is the base of the next build and start, as a snapshot built here
                // would be.
                .and_then(|()| imported_base(engine))
                .and_then(|base| self.persist_snapshot(meta, &file, Batch::default(), base, true))
                .and_then(|()| load_meta(engine))
        };
        // A panic part way must not release the gate onto a partial state as if it were whole.
        let imported = std::panic::catch_unwind(std::panic::AssertUnwindSafe(import)).unwrap_or_else(|_| {
            let panicked = std::io::Error::other("the import panicked (see the panic above)");
            Err(crate::typ::StorageError::write_snapshot(Some(meta.signature()), crate::typ::err_source(&panicked)))
        });
        let mut fresh = match imported {
            Ok(fresh) => fresh,
            Err(e) => {
                // What is stored is part of a snapshot: only a restart's restore may clear the mark.
                gate.apply_failed = true;
                tracing::error!(snapshot = %file, "importing the snapshot from the leader failed, this member stops serving: {e}");
                self.shared.snapshot.send_modify(|s| s.install_failed = true);
                return;
            }
        };
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
    }

    /// The first stage of [`KvStore::install_stages`]: the received data stored as `file`,
    /// the stored state marked torn, and the snapshot's meta pointing at the file, synced in
    /// that order. From here the log it covers may be purged.
    fn store_current(
        &self,
        meta: &SnapshotMeta,
        data: SnapshotData,
        file: &str,
        gate: &mut super::SmMeta,
    ) -> Result<(), StorageError> {
        let engine = &*self.shared.engine;
        let write_err = |e: crate::engine::EngineError| {
            crate::typ::StorageError::write_snapshot(Some(meta.signature()), crate::typ::err_source(&e))
        };
        // The file first: until the meta below points to it, it is an unused file.
        let checked = match data.into_received() {
            Ok((received, checked)) => {
                engine.store_received(file, received).map_err(write_err)?;
                checked
            }
            Err(mut other) => {
                engine
                    .put_file(file, &mut |out| {
                        other.seek(std::io::SeekFrom::Start(0))?;
                        std::io::copy(&mut other, out).map(drop)
                    })
                    .map_err(write_err)?;
                false
            }
        };
        if !checked {
            check_file(engine, meta, file)?;
        }
        // Torn before the meta moves: a start that finds the new meta restores its snapshot.
        mark_torn(engine, gate)?;
        self.persist_snapshot(meta, file, Batch::default(), None, false)
    }
}
