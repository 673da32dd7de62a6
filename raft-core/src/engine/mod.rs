//! The storage engine boundary: the few operations the Raft log store and the MVCC state machine
//! need (named trees, point reads, ordered scans, atomic multi-tree batches, a durable flush),
//! and the Raft log itself, which lives apart from the trees so that making an entry durable
//! syncs that entry only, not everything the state machine wrote since the last flush.
//!
//! Everything above this trait is written once. Two engines implement it:
//! - [`SledEngine`]: the real one, sled 0.34.7 plus the fsyncs sled does not do itself, and the
//!   Raft log in segment files of its own ([`SegmentLog`]);
//! - [`MemEngine`]: an in-memory engine for deterministic simulation whose simulated crash
//!   drops everything written after the last [`Engine::flush`].

mod mem;
mod packed;
mod segment_log;
mod sled_engine;

use std::ops::Bound;

pub use crate::snapshot_data::{ReadSeek, ReceivedFile};

pub(crate) use mem::valid;
pub use mem::MemEngine;
pub use segment_log::{LogError, SegmentLog};
pub use sled_engine::{SledEngine, SyncStats};

/// A named keyspace. Every tree of a node lives in one engine so one batch can span several.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// Vote, last purged log id, committed log id.
    RaftMeta,
    /// Every retained version, in revision order: revision ‖ sub-revision -> user key and
    /// encoded record (reads at a revision, watch replay, compaction, snapshots). The sled
    /// engine stores the pairs of one apply as one record. The index by key and the table of
    /// current keys are derived from it and live in memory above the engine (`mvcc::index`).
    KvRevs,
    /// State-machine meta: last applied, membership, revisions, cluster id.
    SmMeta,
    /// Published member attributes (name, client URLs) keyed by member id.
    Members,
    /// Leases: id (8 bytes, big-endian) -> granted TTL and last checkpointed remaining TTL.
    Leases,
    /// The current snapshot (meta and data) so a restart can serve it again.
    Snapshot,
}

impl Tree {
    /// All trees, in a fixed order (used to open them and to span batches).
    pub const ALL: [Tree; 6] =
        [Tree::RaftMeta, Tree::KvRevs, Tree::SmMeta, Tree::Members, Tree::Leases, Tree::Snapshot];

    /// The on-disk name of the tree.
    pub fn name(self) -> &'static str {
        match self {
            Tree::RaftMeta => "raft_meta",
            Tree::KvRevs => "kv_revs",
            Tree::SmMeta => "sm_meta",
            Tree::Members => "members",
            Tree::Leases => "leases",
            Tree::Snapshot => "snapshot",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Errors of an engine. Any of them is fatal for the node: storage that fails cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The storage backend's own error (sled's, for the sled engine), boxed so that no
    /// backend type appears in the engine traits.
    #[error("{0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft log: {0}")]
    Log(#[from] LogError),
    /// A write that does not fit a tree's layout (a bug above the engine).
    #[error("layout: {0}")]
    Layout(&'static str),
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A key-value pair as returned by scans.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A lazy ordered scan. Items are owned so no engine lock is held between `next` calls.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<Pair>> + Send + 'a>;

/// One write of a batch: `None` deletes the key.
#[derive(Clone, Debug)]
pub struct Op {
    pub tree: Tree,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Writes applied all-or-nothing by [`KvEngine::write`], in order (a later op on the same key wins).
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op { tree, key: key.into(), value: Some(value.into()) });
    }

    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push(Op { tree, key: key.into(), value: None });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values, to bound batch sizes.
    pub fn encoded_len(&self) -> usize {
        self.ops.iter().map(|o| o.key.len() + o.value.as_ref().map_or(0, Vec::len)).sum()
    }
}

/// A node's storage: the trees and files of the state machine ([`KvEngine`]) and the Raft log
/// ([`RaftEngine`]) in one place, so one durable [`Engine::flush`] covers both. They are two
/// traits because they are two concerns with different costs (as TiKV keeps its `RaftEngine`
/// apart from its `KvEngine`): a log append syncs the log alone, and the state machine's
/// writes are made durable only at snapshots and shutdown.
pub trait Engine: KvEngine + RaftEngine {
    /// Makes every earlier write, trees and log, durable: it survives power loss once this
    /// returns. The only point where state-machine data may be acknowledged.
    fn flush(&self) -> Result<()>;
}

/// The trees and files of the state machine. Implementations must make [`KvEngine::write`]
/// atomic (after a crash either every op of a batch is visible or none).
pub trait KvEngine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Scans `[lower, upper)`-style bounds in key order, or in reverse order.
    fn scan(&self, tree: Tree, lower: Bound<&[u8]>, upper: Bound<&[u8]>, reverse: bool) -> Scan<'_>;

    /// Applies a batch atomically. Not durable until [`Engine::flush`] returns.
    fn write(&self, batch: Batch) -> Result<()>;

    /// Applies a batch op by op, in order, without making it atomic: a crash may keep any
    /// prefix of the ops written since the last flush, a batch cut anywhere. Readers see each op
    /// as it lands. For the state machine's applies, whose atomicity comes from elsewhere (see
    /// `state_machine`): in sled an atomic batch seals and writes its I/O buffer twice and wakes
    /// sled's whole I/O thread pool each time, on every member for every Raft entry.
    fn write_relaxed(&self, batch: Batch) -> Result<()>;

    /// Approximate bytes the engine occupies (Status.dbSize).
    fn size_on_disk(&self) -> u64;

    /// Stores a file `name` beside the trees, written by `fill`: durable once this returns,
    /// and replacing an earlier one of that name atomically. For values too large to pass
    /// through the trees (snapshot data: as a tree value sled copied it several times over and
    /// kept it in its cache). `fill` runs before the file is synced, so locks it takes are not
    /// held across the sync.
    fn put_file(&self, name: &str, fill: &mut dyn FnMut(&mut dyn FileWrite) -> std::io::Result<()>) -> Result<()>;

    /// A stored file's content, if there is one of that name.
    fn get_file(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// A stored file to read as a stream, if there is one of that name: for files too large to
    /// hold whole. The stream stays readable if the file is replaced or removed meanwhile.
    fn open_file(&self, name: &str) -> Result<Option<Box<dyn ReadSeek>>>;

    /// A new file to receive data into (a snapshot sent by the leader, written as it arrives),
    /// not stored until [`KvEngine::store_received`]; dropped unstored, it is removed, and a crash
    /// leaves nothing that the next open keeps.
    fn receive_file(&self) -> Result<Box<dyn ReceivedFile>>;

    /// Stores a file made by [`KvEngine::receive_file`] under `name`, as [`KvEngine::put_file`]
    /// would have written it: durable once this returns, replacing an earlier one atomically.
    fn store_received(&self, name: &str, file: Box<dyn ReceivedFile>) -> Result<()>;

    /// Removes every stored file but `keep`, durably; a file that a `put_file` running alongside
    /// is still writing stays (it is not stored yet).
    fn retain_file(&self, keep: &str) -> Result<()>;
}

/// The Raft log: entries by index, appended, synced, truncated and purged apart from the trees.
pub trait RaftEngine: Send + Sync + 'static {
    /// Appends Raft log entries `(index, encoded entry)`. The indexes follow one another and the
    /// first follows the last stored entry (any index starts an empty log). Not durable until
    /// [`RaftEngine::log_sync`] or [`Engine::flush`] returns.
    fn log_append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<()>;

    /// Makes every earlier log append durable, and nothing else: a log append costs a sync of
    /// the log's own bytes, whatever the trees hold unflushed.
    fn log_sync(&self) -> Result<()>;

    /// Removes the entries at `from` and above, durably (with every earlier append).
    fn log_truncate(&self, from: u64) -> Result<()>;

    /// Drops the entries at `upto` and below, or some of them: the caller records the purge
    /// position and never reads below it. Not durable on its own: a crash may bring purged
    /// entries back, always below the entries kept, so the stored log has no gap.
    fn log_purge(&self, upto: u64) -> Result<()>;

    /// Entries of `[from, to)` in order, stopping after the first whose encoded bytes reach
    /// `budget` (at least one entry when any is stored in the range). Starts at the first
    /// stored entry when `from` lies below it.
    fn log_read(&self, from: u64, to: u64, budget: usize) -> Result<Vec<Vec<u8>>>;

    /// The last stored entry.
    fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>>;
}

/// What [`KvEngine::put_file`] writes to: a file, positioned as it is written, that may seek back
/// (to fill in a length it learnt later).
pub trait FileWrite: std::io::Write + std::io::Seek {}

impl<T: std::io::Write + std::io::Seek> FileWrite for T {}

/// Convenience scans over an [`Engine`].
pub trait EngineExt: KvEngine {
    /// Every pair whose key starts with `prefix`.
    fn scan_prefix(&self, tree: Tree, prefix: &[u8]) -> Scan<'_> {
        match prefix_end(prefix) {
            Some(end) => self.scan(tree, Bound::Included(prefix), Bound::Excluded(&end), false),
            None => self.scan(tree, Bound::Included(prefix), Bound::Unbounded, false),
        }
    }

    /// The last pair of the whole tree.
    fn last(&self, tree: Tree) -> Result<Option<Pair>> {
        self.scan(tree, Bound::Unbounded, Bound::Unbounded, true).next().transpose()
    }
}

impl<E: KvEngine + ?Sized> EngineExt for E {}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none
/// (the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// True when the bounds select nothing; ordered maps panic on such ranges.
pub(crate) fn owned_range_is_empty(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    use Bound::*;
    match (lower, upper) {
        (Included(a), Included(b)) => a > b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) | (Excluded(a), Excluded(b)) => a >= b,
        _ => false,
    }
}

/// Owned copy of a borrowed bound.
pub(crate) fn owned_bound(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_skips_trailing_ff() {
        assert_eq!(prefix_end(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
