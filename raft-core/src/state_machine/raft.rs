//! openraft's state-machine interface over the store: each call hands off to the file that
//! owns its concern (apply, build, install), or serves the stored snapshot.

use std::io;

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::OptionalSend;

use super::meta::{sm_read_err, SNAP_FILE};
use super::KvStore;
use crate::engine::{Engine, Tree};
use crate::snapshot_data::SnapshotData;
use crate::typ::{err_source, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// An apply batch that takes longer than this is logged.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

impl<E: Engine> RaftStateMachine<TypeConfig> for KvStore<E> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let m = self.read_gate();
        Ok((m.last_applied, m.membership.clone()))
    }

    /// Applies what openraft has ready as one batch (one write of the trees), then answers each
    /// entry's waiting client, if any.
    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: futures::Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let ready: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let (entries, responders): (Vec<_>, Vec<_>) = ready.into_iter().unzip();
        let (count, began) = (entries.len(), std::time::Instant::now());
        let responses = self.apply_entries(entries)?;
        let took = began.elapsed();
        if took > SLOW_APPLY {
            // etcd warns the same way ("apply request took too long"): a slow apply holds up
            // this member's other work on the runtime.
            tracing::warn!(entries = count, took_ms = took.as_millis() as u64, "applying a batch took long");
        }
        for (responder, response) in responders.into_iter().zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Stores the snapshot and replaces the whole state with it (see [`KvStore::install`]).
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        Ok(self.install(meta, snapshot).await?)
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let engine = &self.shared.engine;
        let Some(meta) = self.stored_snapshot_meta()? else {
            return Ok(None);
        };
        let file = engine.get(Tree::Snapshot, SNAP_FILE).map_err(sm_read_err)?.unwrap_or_default();
        // Read from the file as it is sent, a chunk at a time.
        let data = engine.open_file(&String::from_utf8_lossy(&file)).map_err(sm_read_err)?.ok_or_else(|| {
            let missing = io::Error::new(io::ErrorKind::NotFound, "the current snapshot's file is missing");
            StorageError::read_snapshot(Some(meta.signature()), err_source(&missing))
        })?;
        Ok(Some(Snapshot { meta, snapshot: SnapshotData::stored(data) }))
    }
}

/// Chunked InstallSnapshot (openraft-legacy's receiver, which the peer service serves): the
/// chunks from the leader are written into a file of the engine as they arrive.
impl<E: Engine> openraft_legacy::network_v1::SnapshotReceiverFactory<TypeConfig> for KvStore<E> {
    type SnapshotReceiver = SnapshotData;

    async fn begin_receiving_snapshot(&mut self) -> io::Result<SnapshotData> {
        let file = self.shared.engine.receive_file().map_err(|e| StorageError::write_snapshot(None, err_source(&e)))?;
        Ok(SnapshotData::received(file))
    }
}

impl<E: Engine> KvStore<E> {
    /// Applies `entries` as openraft would, outside openraft (tests, benchmarks, tools): the
    /// same path as [`RaftStateMachine::apply`], with the responses returned instead of sent.
    pub async fn apply<I>(&mut self, entries: I) -> Result<Vec<crate::request::ResponseBatch>, StorageError>
    where
        I: IntoIterator<Item = crate::typ::Entry>,
    {
        self.apply_entries(entries)
    }
}
