//! openraft's state-machine interface over the store: each call hands off to the file that
//! owns its concern (apply, build, install), or serves the stored snapshot.

use openraft::storage::RaftStateMachine;
use openraft::{OptionalSend, StorageIOError};

use super::meta::{sm_read_err, SNAP_FILE};
use super::KvStore;
use crate::engine::{Engine, Tree};
use crate::request::ResponseBatch;
use crate::snapshot_data::SnapshotData;
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

impl<E: Engine> RaftStateMachine<TypeConfig> for KvStore<E> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.read_gate();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ResponseBatch>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// A file of the engine that the chunks from the leader are written into as they arrive.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let file = self.shared.engine.receive_file().map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotData::received(file)))
    }

    /// Replaces the whole state with the snapshot's (see [`KvStore::try_install`]).
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        // Replacing the whole state takes long on a big store: off the runtime.
        crate::rt::blocking(|| self.install(meta, *snapshot))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let engine = &self.shared.engine;
        let Some(meta) = self.stored_snapshot_meta()? else {
            return Ok(None);
        };
        let file = engine.get(Tree::Snapshot, SNAP_FILE).map_err(sm_read_err)?.unwrap_or_default();
        // Read from the file as it is sent, a chunk at a time.
        let data = engine.open_file(&String::from_utf8_lossy(&file)).map_err(sm_read_err)?.ok_or_else(|| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::new(std::io::ErrorKind::NotFound, "the current snapshot's file is missing"),
            )
        })?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::stored(data)) }))
    }
}
