//! The replicated state machine: the MVCC store plus the meta that must move with it.
//!
//! Each `apply` call lands as one engine batch holding the kv changes of its entries and the
//! meta they produced (revision, compact revision, last applied log id, membership). Apply does
//! not flush: the log store records the committed index and a restart re-applies what the
//! engine lost.
//!
//! The batch is written op by op ([`Engine::write_relaxed`]): an atomic batch in sled seals and
//! writes its I/O buffer twice and wakes sled's whole I/O thread pool each time, on every member
//! for every entry. So a crash can leave part of an apply on disk, which re-applying would
//! compound (a put reads the version it increments). Instead the stored state is marked *torn*
//! (durably) before the first such write after each point where it was flushed whole (a
//! snapshot stored or installed, a clean shutdown); a member that opens a torn state goes back
//! to its stored snapshot, or to the empty state if it has none, and openraft applies the log
//! from there. Every entry after the snapshot is still in the log: entries are purged only up to
//! a snapshot.
//!
//! Readers take the gate shared for a consistent multi-key view; apply takes it exclusively only
//! while its finished batch lands, never while computing it; a snapshot export takes it only to
//! capture its position, then streams the history while apply goes on.

use std::io::Seek;
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
use crate::snapshot_data::SnapshotData;
use crate::typ::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const REVISION: &[u8] = b"revision";
const COMPACTED: &[u8] = b"compacted";
const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";
const CLUSTER_ID: &[u8] = b"cluster_id";
/// Present while the stored state may hold part of an apply (see the module doc).
const TORN: &[u8] = b"torn";
const SNAP_META: &[u8] = b"meta";
/// The name of the file holding the current snapshot's data.
const SNAP_FILE: &[u8] = b"file";
/// The revision and compacted revision the current snapshot was built at, when this member
/// built it: the base of the next build (see [`content::export`]).
const SNAP_BASE: &[u8] = b"base";

/// The file an installed snapshot is stored in, named by a digest of its id. The id comes from
/// the leader, and any id must name a plain file in the files directory: a raw id holding a `/`
/// was refused there, and that refusal, a storage error, stopped the member.
fn installed_file_name(snapshot_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(snapshot_id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("snapshot-{hex}")
}

/// The meta of a snapshot of the state machine in `meta`'s state.
fn snapshot_meta_of(meta: &SmMeta) -> SnapshotMeta {
    let snapshot_id = match &meta.last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, meta.revision),
        None => format!("empty-{}", meta.revision),
    };
    SnapshotMeta { last_log_id: meta.last_applied, last_membership: meta.membership.clone(), snapshot_id }
}

/// Trees that make up the state machine.
const SM_TREES: [Tree; 5] = [Tree::Kv, Tree::KvHistory, Tree::KvRevs, Tree::SmMeta, Tree::Members];

/// Trees a snapshot carries: the others are derived from `KvRevs` when it is imported.
const SNAPSHOT_TREES: [Tree; 3] = [Tree::KvRevs, Tree::SmMeta, Tree::Members];

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
    /// [`KvStore::flush_whole`]).
    pub apply_failed: bool,
}

/// Where the stored snapshot ends: the log below it may be purged
/// ([`KvStore::stored_snapshot`]).
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

/// A snapshot's data: the MVCC history up to the snapshot's revision, and the small trees.
///
/// Stored as a file beside the trees (`Engine::put_file`), named after the snapshot. The layout
/// is the bincode encoding of `Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>` (tree name, then its
/// pairs; every length a little-endian u64), but it is never built as that value: holding each
/// pair as two `Vec`s besides the encoding took several times the snapshot's size, and members'
/// memory peaked at every snapshot of a large store (issue #8).
///
/// The history is exported while apply goes on (a copy of a large store under the gate stalled
/// apply for over a second, long enough for elections under load). That works because
/// `KvRevs` only grows between compactions and a version never changes once written: the
/// export takes every version at or below the revision it captured, and compaction waits for
/// it. The index `KvHistory` and the current-key table `Kv` are derived from `KvRevs`, so they
/// are not exported; the importer rebuilds them ([`derive`]). `KvRevs` always holds each live
/// key's latest version (compaction keeps it).
mod content {
    use crate::engine::{Batch, Engine, FileWrite, Pair, Tree};
    use crate::mvcc::keys::{history_key, index_value, revs_key, split_revs_key, Version};
    use std::io::SeekFrom;
    use std::ops::Bound;

    fn write_len(out: &mut dyn FileWrite, n: usize) -> std::io::Result<()> {
        out.write_all(&(n as u64).to_le_bytes())
    }

    fn write_bytes(out: &mut dyn FileWrite, b: &[u8]) -> std::io::Result<()> {
        write_len(out, b.len())?;
        out.write_all(b)
    }

    /// Writes one tree's section from `pairs`, holding nothing but the pair at hand: the pair
    /// count is written as 0 and filled in once the pairs are done.
    fn section(
        out: &mut dyn FileWrite,
        tree: Tree,
        pairs: impl Iterator<Item = std::io::Result<Pair>>,
    ) -> std::io::Result<()> {
        write_bytes(out, tree.name().as_bytes())?;
        let count_at = out.stream_position()?;
        write_len(out, 0)?;
        let mut count = 0;
        for pair in pairs {
            let (k, v) = pair?;
            write_bytes(out, &k)?;
            write_bytes(out, &v)?;
            count += 1;
        }
        let end = out.stream_position()?;
        out.seek(SeekFrom::Start(count_at))?;
        write_len(out, count)?;
        out.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    /// Writes the state at `revision`: every `KvRevs` pair at or below it, then `small`, the
    /// other trees as the caller copied them at that revision. The caller keeps compaction from
    /// removing versions until this returns.
    ///
    /// The versions come from `base` up to its revision, when the caller has one: an earlier
    /// snapshot's data with no compaction since, so it holds exactly the versions at or below
    /// its revision that are stored now (history only grows between compactions). Only the
    /// newer ones are read from the engine, in one scan (later versions that apply adds
    /// meanwhile are past its end). Reading the whole history back from sled at every
    /// snapshot cost the time to read it, and memory: sled keeps the pages a scan reads in
    /// memory until its cache has seen many more accesses since (docs/architecture.md).
    pub fn export<E: Engine + ?Sized>(
        engine: &E,
        revision: i64,
        base: Option<Base>,
        small: &[(Tree, Vec<Pair>)],
        out: &mut dyn FileWrite,
    ) -> std::io::Result<()> {
        write_len(out, 1 + small.len())?;
        section(out, Tree::KvRevs, versions(engine, revision, base)?)?;
        for (tree, pairs) in small {
            section(out, *tree, pairs.iter().cloned().map(Ok))?;
        }
        Ok(())
    }

    /// Every `KvRevs` pair at or below `revision`, in order: from `base` up to its revision
    /// when there is one (see [`export`]), the rest from the engine.
    pub fn versions<'e, E: Engine + ?Sized>(
        engine: &'e E,
        revision: i64,
        base: Option<Base>,
    ) -> std::io::Result<impl Iterator<Item = std::io::Result<Pair>> + 'e> {
        let end = revs_key(revision.saturating_add(1), 0);
        let (from, base) = match base {
            Some(base) if base.revision <= revision => {
                (revs_key(base.revision.saturating_add(1), 0).to_vec(), Some(BaseVersions::open(base)?))
            }
            _ => (Vec::new(), None),
        };
        let newer = engine
            .scan(Tree::KvRevs, Bound::Included(&from), Bound::Excluded(&end), false)
            .map(|item| item.map_err(std::io::Error::other));
        Ok(base.into_iter().flatten().chain(newer))
    }

    /// An earlier snapshot's data to export from (see [`export`]).
    pub struct Base {
        pub data: Box<dyn crate::engine::ReadSeek>,
        /// The revision it was taken at.
        pub revision: i64,
    }

    /// The `KvRevs` section a snapshot's data starts with, read as a stream.
    struct BaseVersions {
        base: Base,
        left: u64,
    }

    /// Most bytes of one key or value in a snapshot: a version is at most a request's size.
    const MAX_FIELD: u64 = 64 << 20;

    /// Reads a length (the encoding's count of pairs, trees or bytes) from snapshot data, held
    /// whole (`&[u8]`) or streamed from a file alike.
    fn read_len(r: &mut dyn std::io::Read) -> std::io::Result<u64> {
        let mut n = [0u8; 8];
        r.read_exact(&mut n).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => invalid("the data ends inside a length".into()),
            _ => e,
        })?;
        Ok(u64::from_le_bytes(n))
    }

    /// Reads a key, a value or a tree name (see [`read_len`]).
    fn read_bytes(r: &mut dyn std::io::Read) -> std::io::Result<Vec<u8>> {
        let n = read_len(r)?;
        if n > MAX_FIELD {
            return Err(invalid(format!("a field of {n} bytes")));
        }
        let mut b = Vec::with_capacity(n as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(r, n), &mut b)?;
        if b.len() as u64 != n {
            return Err(invalid(format!("{n} bytes announced, {} left", b.len())));
        }
        Ok(b)
    }

    impl BaseVersions {
        fn open(mut base: Base) -> std::io::Result<Self> {
            read_len(&mut base.data)?;
            if read_bytes(&mut base.data)? != Tree::KvRevs.name().as_bytes() {
                return Err(invalid("the base snapshot does not start with its versions".into()));
            }
            let left = read_len(&mut base.data)?;
            Ok(BaseVersions { base, left })
        }

        fn pair(&mut self) -> std::io::Result<Pair> {
            let k = read_bytes(&mut self.base.data)?;
            let v = read_bytes(&mut self.base.data)?;
            match split_revs_key(&k) {
                Some((rev, _)) if rev <= self.base.revision => Ok((k, v)),
                _ => Err(invalid("a base snapshot version past the base's revision".into())),
            }
        }
    }

    impl Iterator for BaseVersions {
        type Item = std::io::Result<Pair>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            let pair = self.pair();
            if pair.is_err() {
                self.left = 0;
            }
            Some(pair)
        }
    }

    fn invalid(what: String) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt snapshot: {what}"))
    }

    /// Adds to `batch` the derived trees' pairs for one `KvRevs` pair: its index entry in
    /// `KvHistory`, and the key's entry in `Kv` as of this version (set, or removed by a
    /// tombstone). Fed every version in revision order, `Kv` ends with each key's last
    /// version when it is live; nothing is held between versions, so memory does not grow
    /// with the store.
    pub fn derive(revs_key: &[u8], version: &[u8], batch: &mut Batch) -> std::io::Result<()> {
        let (rev, sub) = split_revs_key(revs_key).ok_or_else(|| invalid("malformed version key".into()))?;
        let Version { key, record } = Version::decode(version).map_err(|e| invalid(format!("version: {e}")))?;
        batch.put(Tree::KvHistory, history_key(&key, rev), index_value(sub));
        if record.is_tombstone() {
            batch.delete(Tree::Kv, key);
        } else {
            batch.put(Tree::Kv, key, record.encode());
        }
        Ok(())
    }

    /// Most bytes of pairs [`import`] gathers before handing them on.
    pub const IMPORT_PART: usize = 1 << 20;

    /// Reads snapshot data from `data` as a stream and hands `write` a put for every pair,
    /// each into the tree of `trees` it names, with the derived trees' pairs (see [`derive`]),
    /// in batches of about [`IMPORT_PART`] bytes: the data is never held whole.
    pub fn import(
        data: &mut dyn std::io::Read,
        trees: &[Tree],
        write: &mut dyn FnMut(Batch) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let r = data;
        let mut batch = Batch::default();
        let mut bytes = 0;
        for _ in 0..read_len(r)? {
            let name = read_bytes(r)?;
            let tree = *trees
                .iter()
                .find(|t| t.name().as_bytes() == name)
                .ok_or_else(|| invalid(format!("unknown tree {}", String::from_utf8_lossy(&name))))?;
            for _ in 0..read_len(r)? {
                let k = read_bytes(r)?;
                let v = read_bytes(r)?;
                bytes += k.len() + v.len();
                if tree == Tree::KvRevs {
                    derive(&k, &v, &mut batch)?;
                }
                batch.put(tree, k, v);
                if bytes >= IMPORT_PART {
                    write(std::mem::take(&mut batch))?;
                    bytes = 0;
                }
            }
        }
        if r.read(&mut [0u8])? != 0 {
            return Err(invalid("data after the last tree".into()));
        }
        write(batch)
    }
}

/// A snapshot file [`KvStore::export`] wrote.
struct Built {
    meta: SnapshotMeta,
    /// The meta of the snapshot stored when the export began.
    stored_before: Option<SnapshotMeta>,
    file: String,
    /// The revision and compacted revision it was taken at.
    at: (i64, i64),
}

struct Shared<E> {
    engine: Arc<E>,
    gate: RwLock<SmMeta>,
    /// Held shared by a snapshot export for as long as it reads the history, and exclusively by
    /// whatever removes versions (an apply that compacts, an install), so an export never
    /// misses a version at or below its revision. Taken before `gate` when both are.
    history: RwLock<()>,
    /// The applied revision, published after every apply and install (session reads wait on it).
    revision: tokio::sync::watch::Sender<i64>,
    /// Snapshots received from a leader and installed since this process started: how often a
    /// member fell too far behind for the log (reported in Status for operators and tests).
    installed: std::sync::atomic::AtomicU64,
    /// The stored snapshot's position, published once it is durable.
    snapshot: tokio::sync::watch::Sender<StoredSnapshot>,
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
        torn: get(TORN)?.is_some(),
        apply_failed: false,
    })
}

/// Ops per write when a large state is rewritten in parts (cleared, imported, derived), so a
/// large store is never held in one batch.
const PART: usize = 1 << 16;

/// Deletes every pair of `trees`, in parts, but the torn mark and the cluster id: the caller
/// writes op by op under the torn mark, which must stay until the state is whole again, and
/// the cluster id is set once, at bootstrap, never by a snapshot.
fn clear_trees<E: Engine>(engine: &E, trees: &[Tree]) -> Result<(), StorageError> {
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

/// Bytes a snapshot's import writes between flushes of the engine.
const FLUSH_EVERY: usize = 4 << 20;

/// Replaces the state machine's trees with the snapshot stored in `file`, streamed from the
/// file in parts. The caller holds the torn mark: a crash part way is restored again.
fn load_snapshot<E: Engine>(engine: &E, meta: &SnapshotMeta, file: &str) -> Result<(), StorageError> {
    let read_err = |e: std::io::Error| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e));
    let missing = || {
        let what = format!("the snapshot's file {file} is missing");
        read_err(std::io::Error::new(std::io::ErrorKind::NotFound, what))
    };
    let mut data = engine.open_file(file).map_err(|e| read_err(std::io::Error::other(e)))?.ok_or_else(missing)?;
    clear_trees(engine, &SM_TREES)?;
    // A failed write is the engine's error, not the snapshot's: keep it as it was.
    let mut failed_write = None;
    let mut unflushed = 0;
    let imported = content::import(&mut data, &SNAPSHOT_TREES, &mut |batch| {
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
    });
    if let Some(e) = failed_write {
        return Err(sm_write_err(e));
    }
    imported.map_err(read_err)
}

/// Takes a torn stored state back to the stored snapshot, or to the empty state when there is
/// none (then no entry was ever purged), durably; openraft applies the log from there. Written
/// in parts under the torn mark: a crash during it only means it runs again.
fn restore<E: Engine>(engine: &E) -> Result<(), StorageError> {
    let snapshot: Option<SnapshotMeta> =
        engine.get(Tree::Snapshot, SNAP_META).map_err(sm_read_err)?.map(|m| decode(&m)).transpose()?;
    let cluster_id = engine.get(Tree::SmMeta, CLUSTER_ID).map_err(sm_read_err)?;
    let mut batch = Batch::default();
    match &snapshot {
        Some(meta) => {
            let name = engine.get(Tree::Snapshot, SNAP_FILE).map_err(sm_read_err)?.unwrap_or_default();
            load_snapshot(engine, meta, &String::from_utf8_lossy(&name))?;
            // The snapshot's position is authoritative even if its content predates the meta keys.
            batch.put(Tree::SmMeta, LAST_APPLIED, encode(&meta.last_log_id));
            batch.put(Tree::SmMeta, MEMBERSHIP, encode(&meta.last_membership));
        }
        None => clear_trees(engine, &SM_TREES)?,
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

/// Rebuilds the trees derived from `KvRevs` (the index `KvHistory` and the current keys `Kv`):
/// the sled engine keeps them in memory only, and an engine that keeps them may have kept
/// them from before a crash. Written in parts: a crash during it only means it runs again. (A
/// start that restores the snapshot instead derives them as it imports it.)
/// The versions come from the stored snapshot where it can serve them, as for an export (see
/// [`content::export`]): read from sled, the whole history would stay in memory a while.
fn rebuild_derived<E: Engine>(engine: &E, meta: &SmMeta) -> Result<(), StorageError> {
    let Some(base) = stored_base(engine, meta) else {
        return derive_from(engine, meta, None);
    };
    derive_from(engine, meta, Some(base)).or_else(|e| {
        tracing::warn!("rebuilding the key index from the stored snapshot failed ({e}); reading every version instead");
        derive_from(engine, meta, None)
    })
}

/// [`rebuild_derived`] from the versions [`content::versions`] yields.
fn derive_from<E: Engine>(engine: &E, meta: &SmMeta, base: Option<content::Base>) -> Result<(), StorageError> {
    clear_trees(engine, &[Tree::Kv, Tree::KvHistory])?;
    let mut batch = Batch::default();
    for item in content::versions(engine, meta.revision, base).map_err(sm_read_err)? {
        let (key, version) = item.map_err(sm_read_err)?;
        content::derive(&key, &version, &mut batch).map_err(sm_read_err)?;
        if batch.ops.len() >= PART {
            engine.write_relaxed(std::mem::take(&mut batch)).map_err(sm_write_err)?;
        }
    }
    engine.write_relaxed(batch).map_err(sm_write_err)
}

/// The stored snapshot's data as the base for reading the versions of the state in `meta`,
/// when this member built it and no compaction came since (see [`content::export`]). Anything
/// missing or unreadable means no base: every version is then read from the engine.
fn stored_base<E: Engine>(engine: &E, meta: &SmMeta) -> Option<content::Base> {
    let (revision, compacted): (i64, i64) = decode(&engine.get(Tree::Snapshot, SNAP_BASE).ok()??).ok()?;
    if compacted != meta.compacted || revision > meta.revision {
        return None;
    }
    let name = engine.get(Tree::Snapshot, SNAP_FILE).ok()??;
    let data = engine.open_file(&String::from_utf8_lossy(&name)).ok()??;
    Some(content::Base { data, revision })
}

/// The revision and compacted revision that an imported snapshot's meta section set, if it
/// set both.
fn imported_base<E: Engine>(engine: &E) -> Result<Option<(i64, i64)>, StorageError> {
    Ok(i64_at(engine, REVISION)?.zip(i64_at(engine, COMPACTED)?))
}

fn meta_ops(batch: &mut Overlay<'_, impl Engine + ?Sized>, m: &SmMeta) {
    batch.put(Tree::SmMeta, REVISION.to_vec(), encode(&m.revision));
    batch.put(Tree::SmMeta, COMPACTED.to_vec(), encode(&m.compacted));
    batch.put(Tree::SmMeta, LAST_APPLIED.to_vec(), encode(&m.last_applied));
    batch.put(Tree::SmMeta, MEMBERSHIP.to_vec(), encode(&m.membership));
}

/// Marks the stored state torn, durably, before the first op-by-op write since it was flushed
/// whole (see the module doc); `gate` is the meta, held exclusively.
fn mark_torn<E: Engine + ?Sized>(engine: &E, gate: &mut SmMeta) -> Result<(), StorageError> {
    if !gate.torn {
        let mut mark = Batch::default();
        mark.put(Tree::SmMeta, TORN, vec![1]);
        engine.write(mark).map_err(sm_write_err)?;
        engine.flush().map_err(sm_write_err)?;
        gate.torn = true;
    }
    Ok(())
}

/// A lock guard taken at once when `now` got it, otherwise waited for through
/// [`crate::rt::blocking`], so a wait never holds up the runtime's other tasks.
fn without_stalling<G>(now: Option<G>, wait: impl FnOnce() -> G) -> G {
    now.unwrap_or_else(|| crate::rt::blocking(wait))
}

impl<E: Engine> KvStore<E> {
    /// Opens the state machine stored in `engine`.
    pub fn open(engine: Arc<E>) -> Result<Self, StorageError> {
        let mut meta = load_meta(&*engine)?;
        if meta.torn {
            // The restore imports the snapshot, which derives `Kv` and `KvHistory` afresh.
            restore(&*engine)?;
            meta = load_meta(&*engine)?;
        } else {
            rebuild_derived(&*engine, &meta)?;
        }
        let (revision, _) = tokio::sync::watch::channel(meta.revision);
        let stored = engine
            .get(Tree::Snapshot, SNAP_META)
            .map_err(sm_read_err)?
            .map(|m| decode::<SnapshotMeta>(&m))
            .transpose()?;
        let (snapshot, _) = tokio::sync::watch::channel(StoredSnapshot {
            last: stored.and_then(|m| m.last_log_id),
            install_failed: false,
        });
        Ok(KvStore {
            shared: Arc::new(Shared {
                engine,
                gate: RwLock::new(meta),
                history: RwLock::new(()),
                revision,
                installed: Default::default(),
                snapshot,
            }),
        })
    }

    /// The stored snapshot's position, updated once each new snapshot is durable. The log store
    /// purges no entry a stored snapshot does not cover
    /// ([`crate::log_store::LogStore::with_snapshot_position`]): openraft 0.9 purges the log up
    /// to a snapshot received from the leader while the state machine is still installing it.
    pub fn stored_snapshot(&self) -> tokio::sync::watch::Receiver<StoredSnapshot> {
        self.shared.snapshot.subscribe()
    }
    /// The gate, shared. It is taken without waiting when it is free; otherwise (an apply is
    /// queued behind a snapshot export) the wait goes through [`crate::rt::blocking`], so it
    /// never holds up the runtime's other tasks.
    fn read_gate(&self) -> parking_lot::RwLockReadGuard<'_, SmMeta> {
        without_stalling(self.shared.gate.try_read(), || self.shared.gate.read())
    }

    /// The gate, exclusively; see [`KvStore::read_gate`].
    fn write_gate(&self) -> parking_lot::RwLockWriteGuard<'_, SmMeta> {
        without_stalling(self.shared.gate.try_write(), || self.shared.gate.write())
    }

    /// The history lock, exclusively (see [`Shared::history`]); waits like
    /// [`KvStore::write_gate`].
    fn history_exclusive(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        without_stalling(self.shared.history.try_write(), || self.shared.history.write())
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

    /// Flushes the stored state whole and clears its torn mark, so the next start need not go
    /// back to the snapshot. For a clean shutdown, once openraft no longer applies.
    pub fn flush_whole(&self) -> Result<(), StorageError> {
        let mut gate = self.write_gate();
        if gate.apply_failed {
            // Part of an apply may be stored: the next start must go back to the snapshot.
            return self.shared.engine.flush().map_err(sm_write_err);
        }
        let mut b = Batch::default();
        b.delete(Tree::SmMeta, TORN);
        self.shared.engine.write(b).map_err(sm_write_err)?;
        self.shared.engine.flush().map_err(sm_write_err)?;
        gate.torn = false;
        Ok(())
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

    /// Writes a snapshot file of the state at the last applied log id. Apply goes on meanwhile:
    /// the gate is held only to capture the position and copy the small trees, and the history
    /// is streamed up to the captured revision (see [`content`]).
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
                    let stored = self.stored_snapshot_meta().map_err(std::io::Error::other)?;
                    let base = if with_base { stored_base(engine, &meta) } else { None };
                    let mut small = Vec::new();
                    for tree in [Tree::SmMeta, Tree::Members] {
                        let pairs = engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false);
                        small.push((tree, pairs.collect::<Result<Vec<_>, _>>().map_err(std::io::Error::other)?));
                    }
                    (meta.clone(), stored, small, base)
                };
                content::export(engine, meta.revision, base, &small, out)?;
                built = Some(Built {
                    meta: snapshot_meta_of(&meta),
                    stored_before: stored,
                    file: file.clone(),
                    at: (meta.revision, meta.compacted),
                });
                Ok(())
            })
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(built.expect("put_file ran the export"))
    }

    /// [`RaftStateMachine::install_snapshot`]'s work, blocking. A failure is published to the
    /// log store's purge waiting for this snapshot, which then fails too.
    fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), StorageError> {
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
        let write_err = |e: crate::engine::EngineError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        // The file first: until the meta below points to it, it is an unused file.
        let file = installed_file_name(&meta.snapshot_id);
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
        if let Err(e) = load_snapshot(engine, meta, &file) {
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
            snapshot = %meta.snapshot_id,
            revision = fresh.revision,
            "installed snapshot up to log {} in {:?}",
            meta.last_log_id.map_or(0, |l| l.index),
            started.elapsed()
        );
        let revision = fresh.revision;
        *gate = fresh;
        drop(gate);
        self.shared.revision.send_replace(revision);
        self.shared.installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes `meta`, with its data in `file` (already stored), the current snapshot together
    /// with `batch`, durably, then removes every other file. `base` is the revision and
    /// compacted revision the snapshot was taken at (`None` when unknown: the next build then
    /// reads every version). Caller holds the gate exclusively,
    /// so no apply is half written: the stored state is whole, and no longer marked torn (the
    /// caller clears `torn` in the gate).
    fn persist_snapshot(
        &self,
        meta: &SnapshotMeta,
        file: &str,
        mut batch: Batch,
        base: Option<(i64, i64)>,
    ) -> Result<(), StorageError> {
        let err = |e: crate::engine::EngineError| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        batch.put(Tree::Snapshot, SNAP_META, encode(meta));
        batch.put(Tree::Snapshot, SNAP_FILE, file.as_bytes().to_vec());
        match base {
            Some(at) => batch.put(Tree::Snapshot, SNAP_BASE, encode(&at)),
            None => batch.delete(Tree::Snapshot, SNAP_BASE),
        }
        batch.delete(Tree::SmMeta, TORN);
        self.shared.engine.write(batch).map_err(err)?;
        self.shared.engine.flush().map_err(err)?;
        self.shared.snapshot.send_modify(|s| s.last = meta.last_log_id);
        self.shared.engine.retain_file(file).map_err(|e| err(e).into())
    }

    /// The stored snapshot's meta, if any.
    fn stored_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        let m = self.shared.engine.get(Tree::Snapshot, SNAP_META).map_err(sm_read_err)?;
        m.map(|m| decode(&m)).transpose()
    }
}

impl<E: Engine> RaftSnapshotBuilder<TypeConfig> for KvStore<E> {
    /// Exports the state at the last applied log id while apply goes on (see [`KvStore::export`]).
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
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
                self.persist_snapshot(&snap_meta, &file, Batch::default(), Some(at))?;
                gate.torn = false;
            }
            Ok::<(), StorageError>(())
        })?;
        // The data went to the file, not into the returned value: openraft 0.9 keeps only the
        // meta of a snapshot it had built (sm worker, startup helper) and reads the data through
        // `get_current_snapshot` when it sends one. A copy the size of the whole state would
        // only raise the member's peak memory.
        Ok(Snapshot { meta: snap_meta, snapshot: Box::new(SnapshotData::empty()) })
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
        let compacted_before = meta.compacted;
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
        // A compaction removes versions: it waits for a snapshot export reading them.
        let _history = (meta.compacted != compacted_before).then(|| self.history_exclusive());
        let mut gate = self.write_gate();
        mark_torn(&*engine, &mut gate)?;
        if let Err(e) = engine.write_relaxed(batch) {
            gate.apply_failed = true;
            return Err(sm_write_err(e));
        }
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
    use crate::engine::{Engine, MemEngine, Pair, Tree};
    use crate::mvcc::read::Revisions;
    use crate::mvcc::view::Overlay;
    use crate::mvcc::write::Writer;
    use kv_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};
    use std::ops::Bound;

    fn dump(engine: &MemEngine, tree: Tree) -> Vec<Pair> {
        engine.scan(tree, Bound::Unbounded, Bound::Unbounded, false).collect::<Result<_, _>>().unwrap()
    }

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest { key: key.into(), value: value.into(), ..Default::default() }
    }

    /// Applies `f`'s writes to `engine` as one batch, as apply does; returns the new revisions.
    fn write(engine: &MemEngine, revs: Revisions, f: impl FnOnce(&mut Writer<'_, '_, MemEngine>)) -> Revisions {
        let mut view = Overlay::new(engine);
        let mut w = Writer { view: &mut view, revs };
        f(&mut w);
        let revs = w.revs;
        engine.write(view.into_batch()).unwrap();
        revs
    }

    /// Puts, an overwrite, a delete and a compaction: history with tombstones and gaps.
    fn first_phase(engine: &MemEngine) -> Revisions {
        write(engine, Revisions { current: 1, compacted: 0 }, |w| {
            for i in 0..20 {
                w.put(&put(&format!("key{i:02}"), &format!("v{i}"))).unwrap();
            }
            w.put(&put("key03", "again")).unwrap();
            w.put(&put("key\0nul", "zero byte in the key")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"key05".to_vec(), ..Default::default() }).unwrap();
            w.compact(&CompactionRequest { revision: 10, ..Default::default() }).unwrap();
            w.put(&put("key07", "after compaction")).unwrap();
        })
    }

    fn export_at(engine: &MemEngine, revision: i64, small: &[(Tree, Vec<Pair>)]) -> Vec<u8> {
        let mut data = std::io::Cursor::new(Vec::new());
        content::export(engine, revision, None, small, &mut data).unwrap();
        data.into_inner()
    }

    /// An export from an earlier snapshot's data (no compaction since) is byte for byte the
    /// export that reads every version; a base that holds versions past its stated revision
    /// is refused rather than copied.
    #[test]
    fn an_export_from_a_base_is_the_full_export() {
        let engine = MemEngine::new();
        let revs = first_phase(&engine);
        let small = vec![(Tree::Members, Vec::new())];
        let earlier = export_at(&engine, revs.current, &small);
        let later = write(&engine, revs, |w| {
            w.put(&put("key03", "later")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"key01".to_vec(), ..Default::default() }).unwrap();
            w.put(&put("new", "later")).unwrap();
        });
        let from_base = |data: &[u8], revision: i64| {
            let base = content::Base { data: Box::new(std::io::Cursor::new(data.to_vec())), revision };
            let mut out = std::io::Cursor::new(Vec::new());
            content::export(&engine, later.current, Some(base), &small, &mut out).map(|()| out.into_inner())
        };
        let full = export_at(&engine, later.current, &small);
        assert_eq!(from_base(&earlier, revs.current).unwrap(), full);
        assert_eq!(from_base(&full, later.current).unwrap(), full, "a base at the revision itself");
        assert!(from_base(&full, revs.current).is_err(), "versions past the base's revision");
        assert!(from_base(&earlier[..earlier.len() / 2], revs.current).is_err(), "a cut base");
    }

    fn import(data: &[u8]) -> MemEngine {
        let engine = MemEngine::new();
        content::import(&mut &data[..], &super::SNAPSHOT_TREES, &mut |batch| {
            engine.write(batch).map_err(std::io::Error::other)
        })
        .unwrap();
        engine
    }

    /// The streamed encoding is byte for byte what bincode writes for the dump of the trees it
    /// holds, so stored snapshots and snapshots sent between members keep their layout.
    #[test]
    fn snapshot_data_has_the_bincode_layout() {
        let engine = MemEngine::new();
        let revs = first_phase(&engine);
        let small = vec![(Tree::SmMeta, vec![(b"revision".to_vec(), b"r".to_vec())]), (Tree::Members, Vec::new())];
        let data = export_at(&engine, revs.current, &small);
        let mut expected: Vec<(String, Vec<Pair>)> =
            [Tree::KvRevs].into_iter().map(|t| (t.name().to_string(), dump(&engine, t))).collect();
        expected.extend(small.iter().map(|(t, pairs)| (t.name().to_string(), pairs.clone())));
        assert_eq!(data, bincode::serialize(&expected).unwrap());
    }

    /// An export running while apply goes on is exactly the state at the revision it
    /// captured: later versions are left out, and the current keys are rebuilt from the
    /// history as they were then (a key deleted later is back, one created later is absent,
    /// one overwritten later has its old value, a tombstoned key stays deleted).
    #[test]
    fn an_export_is_the_state_at_its_revision_whatever_apply_adds() {
        let (then, live) = (MemEngine::new(), MemEngine::new());
        let revs = first_phase(&then);
        assert_eq!(first_phase(&live).current, revs.current);
        write(&live, revs, |w| {
            w.put(&put("key03", "later")).unwrap();
            w.put(&put("new", "later")).unwrap();
            w.delete_range(&DeleteRangeRequest { key: b"key01".to_vec(), ..Default::default() }).unwrap();
            w.put(&put("key05", "recreated later")).unwrap();
        });
        assert_ne!(dump(&live, Tree::Kv), dump(&then, Tree::Kv));

        let restored = import(&export_at(&live, revs.current, &[]));
        for tree in [Tree::Kv, Tree::KvHistory, Tree::KvRevs] {
            assert_eq!(dump(&restored, tree), dump(&then, tree), "tree {}", tree.name());
        }
        assert!(dump(&restored, Tree::Kv).iter().any(|(k, _)| k == b"key\0nul"));
    }

    #[test]
    fn corrupt_snapshot_data_is_refused() {
        let engine = MemEngine::new();
        let revs = first_phase(&engine);
        let data = export_at(&engine, revs.current, &[(Tree::Members, Vec::new())]);
        for bad in [&data[..data.len() - 1], &[data.as_slice(), &[0]].concat()[..], &data[..3]] {
            assert!(content::import(&mut &bad[..], &super::SNAPSHOT_TREES, &mut |_| Ok(())).is_err());
        }
        let known = [Tree::KvRevs];
        assert!(content::import(&mut &data[..], &known, &mut |_| Ok(())).is_err(), "unknown tree");
        // A version that is not a version, and one under a key that is not a revision.
        let version = crate::mvcc::keys::Version::encode(b"k", &crate::mvcc::keys::Record::default());
        let revs_key = crate::mvcc::keys::revs_key(2, 0).to_vec();
        for pair in [(revs_key.clone(), vec![1u8]), (revs_key[..15].to_vec(), version.clone())] {
            let bad = bincode::serialize(&vec![("kv_revs", vec![pair])]).unwrap();
            assert!(content::import(&mut &bad[..], &known, &mut |_| Ok(())).is_err());
        }
        let good = bincode::serialize(&vec![("kv_revs", vec![(revs_key, version)])]).unwrap();
        assert!(content::import(&mut &good[..], &known, &mut |_| Ok(())).is_ok());
    }
}
