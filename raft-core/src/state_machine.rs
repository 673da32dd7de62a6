//! The replicated state machine: the MVCC store plus the meta that must move with it.
//!
//! Each `apply` call lands as one atomic engine batch holding the kv changes of its entries and
//! the meta they produced (revision, compact revision, last applied log id, membership), so a
//! crash never separates data from the position it corresponds to. Apply does not flush: the
//! log store records the committed index and a restart re-applies what the engine lost.
//!
//! Readers take the gate shared for a consistent multi-key view; apply takes it exclusively only
//! while its finished batch lands, never while computing it.

use std::io::Cursor;
use std::ops::Bound;
use std::sync::Arc;

use kv_api::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use parking_lot::RwLock;
use serde::Serialize;

use crate::engine::{Batch, Engine, Tree};
use crate::mvcc::read::{self, Revisions};
use crate::mvcc::view::Overlay;
use crate::mvcc::write::Writer;
use crate::mvcc::MvccError;
use crate::request::{MemberAttrs, ResponseBatch, WriteRequest, WriteResponse, WriteResult};
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const REVISION: &[u8] = b"revision";
const COMPACTED: &[u8] = b"compacted";
const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";
const CLUSTER_ID: &[u8] = b"cluster_id";
const SNAP_META: &[u8] = b"meta";
/// The name of the file holding the current snapshot's data.
const SNAP_FILE: &[u8] = b"file";

/// The meta of a snapshot of the state machine in `meta`'s state.
fn snapshot_meta_of(meta: &SmMeta) -> SnapshotMeta {
    let snapshot_id = match &meta.last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, meta.revision),
        None => format!("empty-{}", meta.revision),
    };
    SnapshotMeta { last_log_id: meta.last_applied, last_membership: meta.membership.clone(), snapshot_id }
}

/// Trees that make up the state machine (what a snapshot carries).
const SM_TREES: [Tree; 5] = [Tree::Kv, Tree::KvHistory, Tree::KvRevs, Tree::SmMeta, Tree::Members];

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
}

impl SmMeta {
    pub fn revisions(&self) -> Revisions {
        Revisions { current: self.revision, compacted: self.compacted }
    }
}

/// A snapshot's data: every pair of every state-machine tree, written and read in one pass.
///
/// Stored as a file beside the trees (`Engine::put_file`), named after the snapshot. The layout
/// is the bincode encoding of `Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>` (tree name,
/// then its pairs; every length a little-endian u64), but it is never built as that value:
/// holding each pair as two `Vec`s besides the encoding took several times the snapshot's
/// size, and members' memory peaked at every snapshot of a large store (issue #8).
mod content {
    use crate::engine::{Batch, Engine, FileWrite, Tree};
    use std::io::SeekFrom;
    use std::ops::Bound;

    fn write_len(out: &mut dyn FileWrite, n: usize) -> std::io::Result<()> {
        out.write_all(&(n as u64).to_le_bytes())
    }

    fn write_bytes(out: &mut dyn FileWrite, b: &[u8]) -> std::io::Result<()> {
        write_len(out, b.len())?;
        out.write_all(b)
    }

    /// Writes every pair of `trees` to `out` in one scan of each, holding nothing but the pair
    /// at hand: a tree's pair count is written as 0 and filled in once the tree is done. The
    /// caller keeps the trees from changing meanwhile.
    pub fn export<E: Engine + ?Sized>(engine: &E, trees: &[Tree], out: &mut dyn FileWrite) -> std::io::Result<()> {
        write_len(out, trees.len())?;
        for &tree in trees {
            write_bytes(out, tree.name().as_bytes())?;
            let count_at = out.stream_position()?;
            write_len(out, 0)?;
            let mut count = 0;
            for item in engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false) {
                let (k, v) = item.map_err(std::io::Error::other)?;
                write_bytes(out, &k)?;
                write_bytes(out, &v)?;
                count += 1;
            }
            let end = out.stream_position()?;
            out.seek(SeekFrom::Start(count_at))?;
            write_len(out, count)?;
            out.seek(SeekFrom::Start(end))?;
        }
        Ok(())
    }

    fn invalid(what: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt snapshot: {what}"))
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn len(&mut self) -> Result<usize, std::io::Error> {
            let (n, rest) = self.0.split_first_chunk::<8>().ok_or_else(|| invalid("truncated length".into()))?;
            self.0 = rest;
            usize::try_from(u64::from_le_bytes(*n)).map_err(|_| invalid("length out of range".into()))
        }

        fn bytes(&mut self) -> Result<&'a [u8], std::io::Error> {
            let n = self.len()?;
            if n > self.0.len() {
                return Err(invalid(format!("{n} bytes announced, {} left", self.0.len())));
            }
            let (b, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(b)
        }
    }

    /// Adds a put to `batch` for every pair in `data`, each into the tree of `trees` it names.
    pub fn import(data: &[u8], trees: &[Tree], batch: &mut Batch) -> Result<(), std::io::Error> {
        let mut r = Reader(data);
        for _ in 0..r.len()? {
            let name = r.bytes()?;
            let tree = trees
                .iter()
                .find(|t| t.name().as_bytes() == name)
                .ok_or_else(|| invalid(format!("unknown tree {}", String::from_utf8_lossy(name))))?;
            for _ in 0..r.len()? {
                let k = r.bytes()?;
                let v = r.bytes()?;
                batch.put(*tree, k, v);
            }
        }
        if !r.0.is_empty() {
            return Err(invalid(format!("{} bytes after the last tree", r.0.len())));
        }
        Ok(())
    }
}

struct Shared<E> {
    engine: Arc<E>,
    gate: RwLock<SmMeta>,
    /// The applied revision, published after every apply and install (session reads wait on it).
    revision: tokio::sync::watch::Sender<i64>,
    /// Snapshots received from a leader and installed since this process started: how often a
    /// member fell too far behind for the log (reported in Status for operators and tests).
    installed: std::sync::atomic::AtomicU64,
}

/// The state machine. Clones share it: openraft owns one, the server reads through another.
pub struct KvStore<E: Engine> {
    shared: Arc<Shared<E>>,
}

impl<E: Engine> Clone for KvStore<E> {
    fn clone(&self) -> Self {
        KvStore { shared: self.shared.clone() }
    }
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn decode<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, StorageError> {
    crate::codec::decode(v).map_err(|e| sm_read_err(*e))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory serialization cannot fail")
}

fn i64_at(engine: &impl Engine, key: &[u8]) -> Result<Option<i64>, StorageError> {
    engine.get(Tree::SmMeta, key).map_err(sm_read_err)?.map(|v| decode::<i64>(&v)).transpose()
}

fn load_meta<E: Engine>(engine: &E) -> Result<SmMeta, StorageError> {
    let get = |k: &[u8]| engine.get(Tree::SmMeta, k).map_err(sm_read_err);
    Ok(SmMeta {
        revision: i64_at(engine, REVISION)?.unwrap_or(1),
        compacted: i64_at(engine, COMPACTED)?.unwrap_or(0),
        last_applied: get(LAST_APPLIED)?.map(|v| decode(&v)).transpose()?.flatten(),
        membership: get(MEMBERSHIP)?.map(|v| decode(&v)).transpose()?.unwrap_or_default(),
        cluster_id: get(CLUSTER_ID)?.map(|v| decode(&v)).transpose()?.unwrap_or(0),
    })
}

fn meta_ops(batch: &mut Overlay<'_, impl Engine + ?Sized>, m: &SmMeta) {
    batch.put(Tree::SmMeta, REVISION.to_vec(), encode(&m.revision));
    batch.put(Tree::SmMeta, COMPACTED.to_vec(), encode(&m.compacted));
    batch.put(Tree::SmMeta, LAST_APPLIED.to_vec(), encode(&m.last_applied));
    batch.put(Tree::SmMeta, MEMBERSHIP.to_vec(), encode(&m.membership));
}

impl<E: Engine> KvStore<E> {
    /// Opens the state machine stored in `engine`.
    pub fn open(engine: Arc<E>) -> Result<Self, StorageError> {
        let meta = load_meta(&*engine)?;
        let (revision, _) = tokio::sync::watch::channel(meta.revision);
        Ok(KvStore {
            shared: Arc::new(Shared { engine, gate: RwLock::new(meta), revision, installed: Default::default() }),
        })
    }
    /// The gate, shared. It is taken without waiting when it is free; otherwise (an apply is
    /// queued behind a snapshot export) the wait goes through [`crate::rt::blocking`], so it
    /// never holds up the runtime's other tasks.
    fn read_gate(&self) -> parking_lot::RwLockReadGuard<'_, SmMeta> {
        match self.shared.gate.try_read() {
            Some(g) => g,
            None => crate::rt::blocking(|| self.shared.gate.read()),
        }
    }

    /// The gate, exclusively; see [`KvStore::read_gate`].
    fn write_gate(&self) -> parking_lot::RwLockWriteGuard<'_, SmMeta> {
        match self.shared.gate.try_write() {
            Some(g) => g,
            None => crate::rt::blocking(|| self.shared.gate.write()),
        }
    }

    pub fn engine(&self) -> &Arc<E> {
        &self.shared.engine
    }

    /// Snapshots installed from a leader since this process started.
    pub fn snapshots_installed(&self) -> u64 {
        self.shared.installed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the applied revision is at least `revision`.
    pub async fn wait_for_revision(&self, revision: i64) {
        let mut rx = self.shared.revision.subscribe();
        // The sender lives as long as the store, which this borrow keeps alive.
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// The last log id applied, without copying the rest of the meta (read paths call this
    /// per request, and openraft's metrics may publish an apply only after its reply).
    pub fn last_applied(&self) -> Option<LogId> {
        self.read_gate().last_applied
    }

    /// A copy of the current meta.
    pub fn meta(&self) -> SmMeta {
        self.read_gate().clone()
    }

    /// Records the cluster id on first start (durably); returns the id the store keeps.
    pub fn init_cluster_id(&self, id: u64) -> Result<u64, StorageError> {
        let mut meta = self.write_gate();
        if meta.cluster_id != 0 {
            return Ok(meta.cluster_id);
        }
        let mut b = Batch::default();
        b.put(Tree::SmMeta, CLUSTER_ID, encode(&id));
        self.shared.engine.write(b).map_err(sm_write_err)?;
        self.shared.engine.flush().map_err(sm_write_err)?;
        meta.cluster_id = id;
        Ok(id)
    }

    /// etcd Range against the local state (the caller has settled the consistency level).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        let meta = self.read_gate();
        read::range(&*self.shared.engine, req, meta.revisions())
    }

    /// A read-only txn (only Range ops) against the local state, without going through Raft.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let meta = self.read_gate();
        let mut view = Overlay::new(&*self.shared.engine);
        let mut w = Writer { view: &mut view, revs: meta.revisions() };
        let resp = w.txn(req)?;
        debug_assert!(view.into_batch().is_empty(), "read_txn was given a txn that writes");
        Ok(resp)
    }

    /// Published member attributes.
    pub fn members(&self) -> Result<Vec<MemberAttrs>, StorageError> {
        let _g = self.read_gate();
        let mut out = Vec::new();
        for item in self.shared.engine.scan(Tree::Members, Bound::Unbounded, Bound::Unbounded, false) {
            out.push(decode(&item.map_err(sm_read_err)?.1)?);
        }
        Ok(out)
    }

    fn apply_one(w: &mut Writer<'_, '_, E>, req: &WriteRequest) -> Result<WriteResult, StorageError> {
        let result = match req {
            WriteRequest::Put(r) => w.put(r).map(WriteResponse::Put),
            WriteRequest::DeleteRange(r) => w.delete_range(r).map(WriteResponse::DeleteRange),
            WriteRequest::Txn(r) => w.txn(r).map(WriteResponse::Txn),
            WriteRequest::Compact(r) => w.compact(r).map(WriteResponse::Compact),
            WriteRequest::PublishMember(m) => {
                w.view.put(Tree::Members, m.id.to_be_bytes().to_vec(), encode(m));
                Ok(WriteResponse::PublishMember)
            }
        };
        match result {
            Ok(r) => Ok(Ok(r)),
            Err(MvccError::Etcd(e)) => Ok(Err(e)),
            Err(e) => Err(sm_write_err(e)),
        }
    }

    /// Writes a snapshot file of the current state, under the shared gate (apply waits, reads
    /// go on) so it is exactly the state at its last applied log id, but not across the file's
    /// fsync. Returns its meta, the meta of the snapshot stored when it began, and the file.
    fn export(&self) -> Result<(SnapshotMeta, Option<SnapshotMeta>, String), StorageError> {
        // Unique per build; the id is not known until the gate is held.
        static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let file = format!("snapshot-built-{nanos}-{}", BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let engine = &*self.shared.engine;
        let mut built = None;
        engine
            .put_file(&file, &mut |out| {
                let meta = self.read_gate();
                let stored = self.stored_snapshot_meta().map_err(std::io::Error::other)?;
                content::export(engine, &SM_TREES, out)?;
                built = Some((snapshot_meta_of(&meta), stored));
                Ok(())
            })
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let (snap, stored) = built.expect("put_file ran the export");
        Ok((snap, stored, file))
    }

    /// [`RaftStateMachine::install_snapshot`]'s work, blocking.
    fn install(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
        let mut gate = self.write_gate();
        let engine = &self.shared.engine;
        // The file first: until the meta below points to it, it is an unused file.
        let file = format!("snapshot-{}", meta.snapshot_id);
        engine
            .put_file(&file, &mut |out| out.write_all(&data))
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut batch = Batch::default();
        for tree in SM_TREES {
            for item in engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false) {
                batch.delete(tree, item.map_err(sm_read_err)?.0);
            }
        }
        content::import(&data, &SM_TREES, &mut batch)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        drop(data);
        self.persist_snapshot(meta, &file, batch)?;
        let mut fresh = load_meta(&**engine)?;
        // The snapshot's position is authoritative even if its content predates the meta keys.
        fresh.last_applied = meta.last_log_id;
        fresh.membership = meta.last_membership.clone();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            revision = fresh.revision,
            "installed snapshot up to log {}",
            meta.last_log_id.map_or(0, |l| l.index)
        );
        let revision = fresh.revision;
        *gate = fresh;
        drop(gate);
        self.shared.revision.send_replace(revision);
        self.shared.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes `meta`, with its data in `file` (already stored), the current snapshot together
    /// with `batch`, durably, then removes every other file. Caller holds the gate exclusively.
    fn persist_snapshot(&self, meta: &SnapshotMeta, file: &str, mut batch: Batch) -> Result<(), StorageError> {
        let err = |e: crate::engine::EngineError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        batch.put(Tree::Snapshot, SNAP_META, encode(meta));
        batch.put(Tree::Snapshot, SNAP_FILE, file.as_bytes().to_vec());
        self.shared.engine.write(batch).map_err(err)?;
        self.shared.engine.flush().map_err(err)?;
        self.shared.engine.retain_file(file).map_err(|e| err(e).into())
    }

    /// The stored snapshot's meta, if any.
    fn stored_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let m = self.shared.engine.get(Tree::Snapshot, SNAP_META).map_err(sm_read_err)?;
        m.map(|m| decode(&m)).transpose()
    }
}

impl<E: Engine> RaftSnapshotBuilder<TypeConfig> for KvStore<E> {
    /// Exports the state under the shared gate (apply waits), so the snapshot is exactly the
    /// state at its last applied log id.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Scanning and writing the whole state takes long on a big store: off the runtime.
        let (snap_meta, stored_before, file) = crate::rt::blocking(|| self.export())?;
        // Builds run concurrently with installs (and the file was written under the shared
        // gate): if another snapshot became current meanwhile, it is at least as new as this
        // build and already removed this build's file. Otherwise this one becomes current; the
        // flush also makes the state machine durable up to this point, so logs the snapshot
        // covers may be purged.
        crate::rt::blocking(|| {
            let _gate = self.write_gate();
            if self.stored_snapshot_meta()? == stored_before {
                self.persist_snapshot(&snap_meta, &file, Batch::default())?;
            }
            Ok::<(), StorageError>(())
        })?;
        // The data went to the file, not into the returned value: openraft 0.9 keeps only the
        // meta of a snapshot it had built (sm worker, startup helper) and reads the data through
        // `get_current_snapshot` when it sends one. A copy the size of the whole state would
        // only raise the member's peak memory.
        Ok(Snapshot { meta: snap_meta, snapshot: Box::new(Cursor::new(Vec::new())) })
    }
}

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
        let mut meta = self.meta();
        let engine = self.shared.engine.clone();
        let mut view = Overlay::new(&*engine);
        let mut replies = Vec::new();
        {
            let mut w = Writer { view: &mut view, revs: meta.revisions() };
            for entry in entries {
                meta.last_applied = Some(entry.log_id);
                let mut reply = ResponseBatch::default();
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(m) => meta.membership = StoredMembership::new(Some(entry.log_id), m),
                    EntryPayload::Normal(batch) => {
                        let requests = batch.requests().map_err(|e| {
                            StorageError::from(openraft::StorageIOError::read_log_at_index(entry.log_id.index, &*e))
                        })?;
                        for req in &requests {
                            reply.results.push(Self::apply_one(&mut w, req)?);
                        }
                    }
                }
                replies.push(reply);
            }
            meta.revision = w.revs.current;
            meta.compacted = w.revs.compacted;
        }
        meta_ops(&mut view, &meta);
        let batch = view.into_batch();
        let mut gate = self.write_gate();
        engine.write(batch).map_err(sm_write_err)?;
        // Only what apply owns: cluster_id is set elsewhere and must not be overwritten.
        gate.revision = meta.revision;
        gate.compacted = meta.compacted;
        gate.last_applied = meta.last_applied;
        gate.membership = meta.membership;
        drop(gate);
        self.shared.revision.send_replace(meta.revision);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the whole state with the snapshot's in one atomic batch.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        // Replacing the whole state takes long on a big store: off the runtime.
        crate::rt::blocking(|| self.install(meta, snapshot.into_inner()))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let engine = &self.shared.engine;
        let Some(meta) = self.stored_snapshot_meta()? else {
            return Ok(None);
        };
        let file = engine.get(Tree::Snapshot, SNAP_FILE).map_err(sm_read_err)?.unwrap_or_default();
        let data = engine.get_file(&String::from_utf8_lossy(&file)).map_err(sm_read_err)?.ok_or_else(|| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::new(std::io::ErrorKind::NotFound, "the current snapshot's file is missing"),
            )
        })?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Whether a txn only reads (then it is served without Raft, like etcd).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    use kv_api::etcdserverpb::request_op::Request;
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestRange(_)) => true,
        Some(Request::RequestTxn(inner)) => txn_is_read_only(inner),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::content;
    use crate::engine::{Batch, Engine, MemEngine, Pair, Tree};

    fn filled() -> MemEngine {
        let engine = MemEngine::new();
        let mut batch = Batch::default();
        for i in 0..50u32 {
            batch.put(Tree::Kv, format!("key{i}").into_bytes(), vec![i as u8; i as usize]);
            batch.put(Tree::KvHistory, i.to_be_bytes().to_vec(), b"rev".to_vec());
        }
        batch.put(Tree::Members, b"m1".to_vec(), Vec::new());
        engine.write(batch).unwrap();
        engine
    }

    /// The one-pass encoding is byte for byte what bincode writes for the tree dump, so stored
    /// snapshots and snapshots sent between members keep their format.
    #[test]
    fn snapshot_data_has_the_bincode_layout_and_round_trips() {
        let trees = [Tree::Kv, Tree::KvHistory, Tree::Members, Tree::SmMeta];
        let engine = filled();
        let mut data = std::io::Cursor::new(Vec::new());
        content::export(&engine, &trees, &mut data).unwrap();
        let data = data.into_inner();
        let dump: Vec<(String, Vec<Pair>)> = trees
            .iter()
            .map(|&t| {
                let pairs = engine.scan(t, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, false);
                (t.name().to_string(), pairs.collect::<Result<Vec<_>, _>>().unwrap())
            })
            .collect();
        assert_eq!(data, bincode::serialize(&dump).unwrap());

        let copy = MemEngine::new();
        let mut batch = Batch::default();
        content::import(&data, &trees, &mut batch).unwrap();
        copy.write(batch).unwrap();
        for (name, pairs) in dump {
            let tree = trees.into_iter().find(|t| t.name() == name).unwrap();
            let got = copy.scan(tree, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, false);
            assert_eq!(got.collect::<Result<Vec<_>, _>>().unwrap(), pairs, "tree {name}");
        }
    }

    #[test]
    fn corrupt_snapshot_data_is_refused() {
        let trees = [Tree::Kv, Tree::Members];
        let mut data = std::io::Cursor::new(Vec::new());
        content::export(&filled(), &trees, &mut data).unwrap();
        let data = data.into_inner();
        for bad in [&data[..data.len() - 1], &[data.as_slice(), &[0]].concat()[..], &data[..3]] {
            assert!(content::import(bad, &trees, &mut Batch::default()).is_err());
        }
        assert!(content::import(&data, &[Tree::Kv], &mut Batch::default()).is_err(), "unknown tree");
    }
}
