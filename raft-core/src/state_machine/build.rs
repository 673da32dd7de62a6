//! Building a snapshot of the applied state while apply goes on, and making it the stored
//! snapshot that the log may be purged behind.

use std::ops::Bound;

use openraft::RaftSnapshotBuilder;

use super::format;
use super::meta::{decode, encode, sm_read_err, snapshot_meta_of, SNAP_BASE, SNAP_FILE, SNAP_META, TORN};
use super::recovery::stored_base;
use super::KvStore;
use crate::engine::{Batch, Engine, Tree};
use crate::snapshot_data::SnapshotData;
use crate::typ::{err_source, Snapshot, SnapshotMeta, StorageError, TypeConfig};

/// A snapshot file [`KvStore::export`] wrote.
struct Built {
    meta: SnapshotMeta,
    /// The meta of the snapshot stored when the export began.
    stored_before: Option<SnapshotMeta>,
    file: String,
    /// The revision and compacted revision it was taken at.
    at: (i64, i64),
}

impl<E: Engine> KvStore<E> {
    /// Writes a snapshot file of the state at the last applied log id. Apply goes on meanwhile:
    /// the gate is held only to capture the position and copy the small trees, and the history
    /// is streamed up to the captured revision (see [`format`]).
    /// It starts from the stored snapshot where it can; if reading that fails, it is written
    /// again from the engine alone.
    fn export(&self) -> Result<Built, StorageError> {
        self.export_from(true).or_else(|e| {
            tracing::warn!("building a snapshot from the stored one failed ({e}); reading every version instead");
            self.export_from(false)
        })
    }

    /// [`KvStore::export`], starting from the stored snapshot when `with_base` and it can.
    fn export_from(&self, with_base: bool) -> Result<Built, StorageError> {
        // Unique per build; the id is not known until the gate is held.
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let file = format!("snapshot-built-{nanos}-{}", BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let engine = &*self.shared.engine;
        let mut built = None;
        engine
            .put_file(&file, &mut |out| {
                // Before the gate, as apply takes them; held until the history is written.
                let _history = self.shared.history.read();
                let (meta, stored, small, base) = {
                    let meta = self.read_gate();
                    super::serving(&meta).map_err(std::io::Error::other)?;
                    let stored = self.stored_snapshot_meta().map_err(std::io::Error::other)?;
                    let base = if with_base { stored_base(engine, &meta) } else { None };
                    let mut small = Vec::new();
                    for tree in [Tree::SmMeta, Tree::Members, Tree::Leases] {
                        let pairs = engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false);
                        small.push((tree, pairs.collect::<Result<Vec<_>, _>>().map_err(std::io::Error::other)?));
                    }
                    (meta.clone(), stored, small, base)
                };
                format::export(engine, meta.revision, base, &small, out)?;
                built = Some(Built {
                    meta: snapshot_meta_of(&meta),
                    stored_before: stored,
                    file: file.clone(),
                    at: (meta.revision, meta.compacted),
                });
                Ok(())
            })
            .map_err(|e| StorageError::write_snapshot(None, err_source(&e)))?;
        Ok(built.expect("put_file ran the export"))
    }

    /// Makes `meta`, with its data in `file` (already stored), the current snapshot together
    /// with `batch`, durably, then removes every other file. `base` is the revision and
    /// compacted revision the snapshot was taken at (`None` when unknown: the next build then
    /// reads every version). Caller holds the gate exclusively. When `whole`, no apply is half
    /// written: the stored state is whole, and no longer marked torn (the caller clears `torn`
    /// in the gate); otherwise the torn mark stays (an install, before it imports the data).
    pub(super) fn persist_snapshot(
        &self,
        meta: &SnapshotMeta,
        file: &str,
        mut batch: Batch,
        base: Option<(i64, i64)>,
        whole: bool,
    ) -> Result<(), StorageError> {
        let err = |e: crate::engine::EngineError| {
            crate::typ::StorageError::write_snapshot(Some(meta.signature()), crate::typ::err_source(&e))
        };
        batch.put(Tree::Snapshot, SNAP_META, encode(meta));
        batch.put(Tree::Snapshot, SNAP_FILE, file.as_bytes().to_vec());
        match base {
            Some(at) => batch.put(Tree::Snapshot, SNAP_BASE, encode(&at)),
            None => batch.delete(Tree::Snapshot, SNAP_BASE),
        }
        if whole {
            batch.delete(Tree::SmMeta, TORN);
        }
        self.shared.engine.write(batch).map_err(err)?;
        self.shared.engine.flush().map_err(err)?;
        self.shared.snapshot.send_modify(|s| s.last = meta.last_log_id);
        self.shared.engine.retain_file(file).map_err(err)
    }

    /// The stored snapshot's meta, if any.
    pub(super) fn stored_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let m = self.shared.engine.get(Tree::Snapshot, SNAP_META).map_err(sm_read_err)?;
        m.map(|m| decode(&m)).transpose()
    }
}

impl<E: Engine> RaftSnapshotBuilder<TypeConfig> for KvStore<E> {
    type SnapshotData = SnapshotData;

    /// Exports the state at the last applied log id while apply goes on (see [`KvStore::export`]).
    async fn build_snapshot(&mut self) -> std::io::Result<Snapshot> {
        let started = std::time::Instant::now();
        // Scanning and writing the whole state takes long on a big store: off the runtime.
        let Built { meta: snap_meta, stored_before, file, at } = crate::rt::blocking(|| self.export())?;
        // Builds run concurrently with installs (an install waits for the export, then replaces
        // the state): if another snapshot became current meanwhile, it is at least as new as this
        // build and already removed this build's file. Otherwise this one becomes current; the
        // flush also makes the state machine durable up to this point, so logs the snapshot
        // covers may be purged.
        crate::rt::blocking(|| {
            let mut gate = self.write_gate();
            if self.stored_snapshot_meta()? == stored_before {
                self.persist_snapshot(&snap_meta, &file, Batch::default(), Some(at), true)?;
                gate.torn = false;
            }
            Ok::<(), StorageError>(())
        })?;
        // Its disk writes slow this member's log syncs while it runs: worth seeing in the log.
        tracing::info!(
            snapshot = %file,
            "built a snapshot up to log {} in {:?}",
            snap_meta.last_log_id.map_or(0, |l| l.index),
            started.elapsed()
        );
        // The data went to the file, not into the returned value: openraft keeps only the meta
        // of a snapshot it had built (sm worker, startup helper) and reads the data through
        // `get_current_snapshot` when it sends one. A copy the size of the whole state would
        // only raise the member's peak memory.
        Ok(Snapshot { meta: snap_meta, snapshot: SnapshotData::empty() })
    }
}
