//! The Raft log and vote, stored in an [`Engine`]: the entries in the engine's log, the vote
//! and positions in its `RaftMeta` tree.
//!
//! Every append, vote, truncation and purge is durable before openraft hears it is done: an
//! entry acknowledged to the leader (and so counted towards a quorum) survives power loss.
//!
//! An append returns as soon as its entries are written (readable, not yet durable); the
//! [`Flusher`] task syncs the log and then tells openraft, in order. Meanwhile openraft 0.10
//! already sends the entries to the followers, and counts the leader's own copy only once the
//! flusher reports it durable: the leader's fsync overlaps the followers'. Appends that arrive
//! while a sync runs share the next one, and nothing the state machine wrote is synced with
//! the log.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use openraft::storage::{LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;
#[cfg(madsim)]
use tokio::sync::mpsc;

use crate::engine::{Batch, Engine, EngineExt, Tree};
use crate::state_machine::StoredSnapshot;
use crate::typ::{Entry, IOFlushed, LogId, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";
const FORMAT: &[u8] = b"format";

/// A durable write of the vote or purge point slower than this is logged: openraft's core
/// waits for it, and an election or AppendEntries with it.
const SLOW_DURABLE_WRITE: std::time::Duration = std::time::Duration::from_millis(100);

/// The on-disk format this build reads and writes, recorded in every data dir it creates.
/// Raise it whenever a stored encoding changes (log entries, vote, state-machine keys): a build
/// must refuse a data dir it would misread rather than apply garbage. Format 2: log entries
/// hold their batch of requests encoded (`RequestBatch`). Format 3: the current snapshot's
/// data is a file beside the trees (`files/snapshot-<id>`), not a value in the snapshot tree.
/// Format 4: the Raft log is in segment files (`log/`), not a tree. Format 5: the revision
/// index is stored packed, one sled record per run of pairs (`engine::packed`). Format 6: each
/// version is stored once, by revision, in `kv_revs` (with its key), and the index by key is
/// derived at start (`mvcc::keys`). Format 7: snapshot data starts with a header naming its
/// format version (`state_machine::format`).
pub const DATA_FORMAT: u32 = 7;

/// A data dir this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("data dir holds on-disk format {found}; this build reads format {DATA_FORMAT} only")]
    Other { found: u32 },
    #[error(
        "data dir has state but no format marker: it was written by a raftkv build from before \
         on-disk format {DATA_FORMAT}, which this build cannot read; move it aside and add this \
         member to the cluster again with an empty data dir"
    )]
    Unmarked,
    #[error("reading or writing the data dir's format marker: {0}")]
    Storage(String),
}

/// A data dir whose log and state machine do not fit together.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "the Raft log is purged up to entry {purged} but the state machine holds {applied}: the \
         entries between are gone; move this data dir aside and add the member to the cluster \
         again with an empty one"
    )]
    PurgedPastState { purged: u64, applied: String },
    #[error("reading the Raft log's state: {0}")]
    Storage(String),
}

/// Default budget of stored log bytes per AppendEntries (see
/// [`LogStore::limited_get_log_entries`]). A read stops after the entry that reaches it, so one
/// AppendEntries carries at most this plus one entry (a write batch, at most
/// `BatchConfig::max_bytes` of requests, 2 MiB): a few megabytes, which a follower appends and
/// fsyncs in a few milliseconds.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// Log storage over an engine. Cheap to clone: clones share the engine.
pub struct LogStore<E: Engine> {
    engine: Arc<E>,
    /// Most stored bytes of entries one AppendEntries carries ([`LogStore::with_append_budget`]).
    append_budget: usize,
    /// Where the stored snapshot ends, if purges must wait for it
    /// ([`LogStore::with_snapshot_position`]).
    snapshot: Option<tokio::sync::watch::Receiver<StoredSnapshot>>,
    /// Syncs appended entries and reports them durable, started by the first append.
    flusher: Arc<OnceLock<Flusher<E>>>,
    /// This member's id ([`LogStore::with_member`]): entries another member proposed are
    /// synced by the append itself ([`LogStore::append`]).
    me: Option<crate::typ::NodeId>,
    #[cfg(feature = "planted-bugs")]
    ack_before_flush: bool,
    #[cfg(feature = "planted-bugs")]
    skip_log_fsync: bool,
    /// The planted bug `leader_counted_before_flush`: entries this member (`me`)
    /// proposed are reported durable before they are synced.
    #[cfg(feature = "planted-bugs")]
    leader_counted_before_flush: bool,
}

impl<E: Engine> Clone for LogStore<E> {
    fn clone(&self) -> Self {
        LogStore {
            engine: self.engine.clone(),
            append_budget: self.append_budget,
            snapshot: self.snapshot.clone(),
            flusher: self.flusher.clone(),
            me: self.me,
            #[cfg(feature = "planted-bugs")]
            ack_before_flush: self.ack_before_flush,
            #[cfg(feature = "planted-bugs")]
            skip_log_fsync: self.skip_log_fsync,
            #[cfg(feature = "planted-bugs")]
            leader_counted_before_flush: self.leader_counted_before_flush,
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// What makes appended entries durable: it takes every append waiting, syncs the log once for
/// all of them, and reports each done in the order they were appended (openraft reads a report
/// as "everything up to here is durable"). A failed sync is reported to every append it
/// covered, and to every later one: the log's tail is then unknown, and openraft stops.
///
/// It runs on a thread of its own: an fsync blocks, and blocking inside the async runtime
/// (`block_in_place`) hands the worker's queue to another thread on every sync, a cost paid on
/// each one-client write. The simulation runs it as a task, on its deterministic scheduler.
///
/// It holds the engine weakly: the engine closes (and can be opened again) as soon as its
/// stores are dropped, and an append still waiting then is reported failed, never durable.
struct Flusher<E> {
    tx: FlushSender,
    shared: Arc<FlushShared<E>>,
}

/// What the flusher's thread (or task) and appends that sync in place share.
struct FlushShared<E> {
    /// Appends sent to the flusher and not yet reported: an append synced in place
    /// ([`Flusher::sync_in_place`]) must not report before them.
    queued: AtomicUsize,
    state: Mutex<FlushState<E>>,
}

impl<E: Engine> FlushShared<E> {
    fn new(engine: &Arc<E>, skip_sync: bool) -> Arc<Self> {
        Arc::new(FlushShared { queued: AtomicUsize::new(0), state: Mutex::new(FlushState::new(engine, skip_sync)) })
    }

    /// Syncs for and reports `waiting`, appends the flusher took from its queue.
    fn flush_queued(&self, waiting: Vec<IOFlushed>) {
        let n = waiting.len();
        self.state.lock().sync_and_report(waiting);
        self.queued.fetch_sub(n, Ordering::SeqCst);
    }
}

#[cfg(not(madsim))]
type FlushSender = std::sync::mpsc::Sender<IOFlushed>;
#[cfg(madsim)]
type FlushSender = mpsc::UnboundedSender<IOFlushed>;

/// The flusher's state between syncs.
struct FlushState<E> {
    engine: std::sync::Weak<E>,
    failed: Option<String>,
    /// The planted bug `skip_log_fsync` (always off in a build without planted bugs).
    skip_sync: bool,
}

impl<E: Engine> FlushState<E> {
    fn new(engine: &Arc<E>, skip_sync: bool) -> Self {
        FlushState { engine: Arc::downgrade(engine), failed: None, skip_sync }
    }

    /// Syncs once (unless an earlier sync failed) and reports every append of `waiting`.
    fn sync_and_report(&mut self, waiting: Vec<IOFlushed>) {
        if self.failed.is_none() {
            self.failed = match self.engine.upgrade() {
                // Planted bug: the appends are reported durable from the page cache.
                Some(_) if self.skip_sync => None,
                Some(engine) => engine.log_sync().err().map(|e| e.to_string()),
                None => Some("the log was closed".into()),
            };
        }
        for callback in waiting {
            callback.io_completed(match &self.failed {
                None => Ok(()),
                Some(why) => Err(io::Error::other(format!("syncing the Raft log: {why}"))),
            });
        }
    }
}

impl<E: Engine> Flusher<E> {
    #[cfg(not(madsim))]
    fn start(engine: &Arc<E>, skip_sync: bool) -> io::Result<Flusher<E>> {
        let shared = FlushShared::new(engine, skip_sync);
        let (tx, rx) = std::sync::mpsc::channel::<IOFlushed>();
        let flusher = shared.clone();
        std::thread::Builder::new().name("raft-log-flusher".into()).spawn(move || {
            // Ends when every sender is gone: the log store was dropped.
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                flusher.flush_queued(waiting);
            }
        })?;
        Ok(Flusher { tx, shared })
    }

    /// Hands `callback` to the flusher, which reports it once the log is synced.
    fn queue(&self, callback: IOFlushed) -> io::Result<()> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.tx.send(callback).map_err(|_| io::Error::other("the Raft log's flusher has stopped"))
    }

    /// Syncs the log here and reports `callback`, unless appends queued earlier are still
    /// unreported (they must report first): then it is queued behind them.
    fn sync_in_place(&self, callback: IOFlushed) -> io::Result<()> {
        if self.shared.queued.load(Ordering::SeqCst) > 0 {
            return self.queue(callback);
        }
        self.shared.state.lock().sync_and_report(vec![callback]);
        Ok(())
    }

    #[cfg(madsim)]
    fn start(engine: &Arc<E>, skip_sync: bool) -> io::Result<Flusher<E>> {
        let shared = FlushShared::new(engine, skip_sync);
        let (tx, mut rx) = mpsc::unbounded_channel::<IOFlushed>();
        let flusher = shared.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                flusher.flush_queued(waiting);
            }
        });
        Ok(Flusher { tx, shared })
    }
}

impl<E: Engine> LogStore<E> {
    /// The store over `engine`, replicating at most [`MAX_APPEND_BYTES`] per AppendEntries.
    pub fn new(engine: Arc<E>) -> Self {
        LogStore {
            engine,
            append_budget: MAX_APPEND_BYTES,
            snapshot: None,
            flusher: Arc::default(),
            me: None,
            #[cfg(feature = "planted-bugs")]
            ack_before_flush: false,
            #[cfg(feature = "planted-bugs")]
            skip_log_fsync: false,
            #[cfg(feature = "planted-bugs")]
            leader_counted_before_flush: false,
        }
    }

    /// The store with another bound on the stored bytes of entries one AppendEntries carries
    /// (one entry always goes, however large): the node's `max_append_bytes`, which the
    /// simulation lowers to replicate in other shapes.
    pub fn with_append_budget(mut self, bytes: usize) -> Self {
        self.append_budget = bytes;
        self
    }

    /// The store of member `me`, which syncs the entries it receives as a follower in the
    /// append itself (see [`LogStore::append`]).
    pub fn with_member(mut self, me: crate::typ::NodeId) -> Self {
        self.me = Some(me);
        self
    }

    /// The store that purges only entries the stored snapshot covers, waiting until it does.
    /// A node always runs with it: when a follower receives a snapshot, openraft 0.9 purges the
    /// log up to it at once, while the state machine is still installing it. A crash in between
    /// left the log starting after the state machine's last entry, which no start recovers from.
    pub fn with_snapshot_position(mut self, stored: tokio::sync::watch::Receiver<StoredSnapshot>) -> Self {
        self.snapshot = Some(stored);
        self
    }

    /// Fails when the log no longer holds the entries after `applied`, the last entry the
    /// stored state machine holds: the member could never catch up from its own log, and
    /// openraft would stop it on the first read of a purged entry with a less helpful error.
    pub async fn check_recoverable(&mut self, applied: Option<LogId>) -> Result<(), RecoveryError> {
        let state = self.get_log_state().await.map_err(|e| RecoveryError::Storage(e.to_string()))?;
        let purged = state.last_purged_log_id.map(|l| l.index);
        let applied = applied.map(|l| l.index);
        if purged > applied {
            return Err(RecoveryError::PurgedPastState {
                purged: purged.unwrap_or_default(),
                applied: applied.map_or("nothing".into(), |a| format!("entry {a}")),
            });
        }
        Ok(())
    }

    /// The store with the planted bugs it should run with (`leader_counted_before_flush` acts
    /// on the entries of the member set by [`LogStore::with_member`]).
    #[cfg(feature = "planted-bugs")]
    pub fn with_planted(mut self, bugs: crate::planted::PlantedBugs) -> Self {
        self.ack_before_flush = bugs.ack_before_flush;
        self.skip_log_fsync = bugs.skip_log_fsync;
        self.leader_counted_before_flush = bugs.leader_counted_before_flush;
        self
    }

    /// Checks that the data dir is in [`DATA_FORMAT`], and marks an empty one as such (durably)
    /// so later builds can tell. Run before anything else reads or writes the engine.
    pub fn check_format(&self) -> Result<(), FormatError> {
        let storage = |e: &dyn std::fmt::Display| FormatError::Storage(e.to_string());
        match self.meta::<u32>(FORMAT).map_err(|e| storage(&e))? {
            Some(DATA_FORMAT) => return Ok(()),
            Some(found) => return Err(FormatError::Other { found }),
            None => {}
        }
        for tree in Tree::ALL {
            if self.engine.last(tree).map_err(|e| storage(&e))?.is_some() {
                return Err(FormatError::Unmarked);
            }
        }
        if self.engine.log_last().map_err(|e| storage(&e))?.is_some() {
            return Err(FormatError::Unmarked);
        }
        let mut batch = Batch::default();
        batch.put(Tree::RaftMeta, FORMAT, bincode::serialize(&DATA_FORMAT).expect("a u32 encodes"));
        self.write_durably(batch, "data format").map_err(|e| storage(&e))
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.engine.get(Tree::RaftMeta, key).map_err(io_err)? {
            Some(v) => Ok(Some(crate::codec::decode(&v).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    /// Writes a batch and makes it durable. `what` names it in the warning a slow one logs: the
    /// vote and the purge point live in the engine's trees, so this flush also writes out what
    /// the state machine wrote since the last one, and openraft's core waits for it.
    fn write_durably(&self, batch: Batch, what: &str) -> io::Result<()> {
        let started = std::time::Instant::now();
        self.engine.write(batch).map_err(io_err)?;
        self.engine.flush().map_err(io_err)?;
        let took = started.elapsed();
        if took > SLOW_DURABLE_WRITE {
            tracing::warn!(took_ms = took.as_millis() as u64, "saving the {what} took long");
        }
        Ok(())
    }
}

impl<E: Engine> LogStore<E> {
    /// The lowest index still in the log: entries below it are purged, even while the engine
    /// still stores some of them.
    fn first_index(&self) -> io::Result<u64> {
        Ok(self.meta::<LogId>(LAST_PURGED)?.map_or(0, |l| l.index + 1))
    }

    /// Entries `[start, end)` in order, stopping after the first whose stored bytes reach
    /// `budget` (always at least one entry when the range is not empty).
    fn entries_within(&self, start: u64, end: u64, budget: usize) -> io::Result<Vec<Entry>> {
        let stored = self.engine.log_read(start.max(self.first_index()?), end, budget).map_err(io_err)?;
        stored.iter().map(|v| crate::codec::decode(v).map_err(io_err)).collect()
    }
}

impl<E: Engine> RaftLogReader<TypeConfig> for LogStore<E> {
    /// What one AppendEntries carries (openraft's replication reads through this): entries up to
    /// and including the one whose stored bytes reach the append budget ([`MAX_APPEND_BYTES`]
    /// by default), however many openraft asks for (its `max_payload_entries` counts entries
    /// only). The whole AppendEntries, the follower's append and fsync included, must finish
    /// within openraft's AppendEntries timeout, which is the heartbeat interval: a catching-up
    /// follower sent 300 full batches never did, and the leader resent it for ever.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.entries_within(start, end, self.append_budget)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.meta(VOTE)
    }

    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.entries_within(start, end, usize::MAX)
    }
}

impl<E: Engine> RaftLogStorage<TypeConfig> for LogStore<E> {
    type LogReader = Self;

    /// Also finishes a purge that a crash cut short after recording its position but before
    /// the entries went, when every stored entry is at or below it: the next append follows the
    /// purge position, which the stored entries would refuse.
    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.meta(LAST_PURGED)?;
        let mut stored = self.engine.log_last().map_err(io_err)?;
        if let (Some(purged), Some((last, _))) = (last_purged_log_id, &stored) {
            if *last <= purged.index {
                self.engine.log_purge(purged.index).map_err(io_err)?;
                self.engine.log_sync().map_err(io_err)?;
                stored = None;
            }
        }
        let last = stored.map(|(_, v)| crate::codec::decode::<Entry>(&v).map_err(io_err)).transpose()?;
        // After a purge of every entry the purge position is the last log id; entries below it
        // that the engine still stores are not the log any more.
        let last = last.map(|e| e.log_id).max(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let mut b = Batch::default();
        b.put(Tree::RaftMeta, VOTE, bincode::serialize(vote).map_err(io_err)?);
        self.write_durably(b, "vote")
    }

    /// Recorded so a restart re-applies committed entries the state machine had not yet made
    /// durable. Not flushed on its own: losing it only means re-applying later.
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        let mut b = Batch::default();
        b.put(Tree::RaftMeta, COMMITTED, bincode::serialize(&committed).map_err(io_err)?);
        self.engine.write(b).map_err(io_err)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    /// Writes the entries (readable from now on); they are reported durable once the log is
    /// synced. That report is what lets openraft count this member's copy towards a quorum.
    ///
    /// Entries this member proposed as leader are synced by the [`Flusher`], so the leader sends
    /// them to its followers while its own sync runs. Entries another member proposed (this
    /// member follows) are synced here, before the append returns, as etcd's followers do: the
    /// follower's answer waits for that sync anyway, and handing it to the flusher thread put a
    /// thread wake-up in front of every one-client write's follower sync. openraft's core on
    /// a follower has nothing to do meanwhile that the entries' answer does not wait for.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut stored = Vec::new();
        let mut follows = self.me.is_some();
        #[cfg(feature = "planted-bugs")]
        let mut own = self.me.is_some();
        for e in entries {
            let proposer = Some(e.log_id.leader_id.node_id);
            follows &= proposer != self.me;
            #[cfg(feature = "planted-bugs")]
            {
                own &= proposer == self.me;
            }
            stored.push((e.log_id.index, bincode::serialize(&e).map_err(io_err)?));
        }
        follows &= !stored.is_empty();
        self.engine.log_append(stored).map_err(io_err)?;
        #[cfg(feature = "planted-bugs")]
        if self.ack_before_flush || (own && self.leader_counted_before_flush) {
            // Planted bug: the entry only sits in unsynced writes until something else syncs
            // (with `leader_counted_before_flush`, only entries this member proposed as leader).
            callback.io_completed(Ok(()));
            return Ok(());
        }
        let flusher = match self.flusher.get() {
            Some(f) => f,
            None => {
                #[cfg(feature = "planted-bugs")]
                let skip_sync = self.skip_log_fsync;
                #[cfg(not(feature = "planted-bugs"))]
                let skip_sync = false;
                let started = Flusher::start(&self.engine, skip_sync)?;
                self.flusher.get_or_init(|| started)
            }
        };
        if follows {
            flusher.sync_in_place(callback)
        } else {
            flusher.queue(callback)
        }
    }

    /// Drops every entry after `last` (all of them when `None`): conflict resolution.
    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        self.engine.log_truncate(last.map_or(0, |l| l.index + 1)).map_err(io_err)
    }

    /// Records the purge position durably, then drops the entries. Only entries a stored
    /// snapshot covers are purged (with [`LogStore::with_snapshot_position`], it waits for one):
    /// a member that crashes goes back to that snapshot at worst, and applies the log after it.
    /// A crash between the two steps leaves entries below the position, which nothing reads and
    /// the next purge, or the next start, drops.
    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        if let Some(stored) = &mut self.snapshot {
            let covered = |s: &StoredSnapshot| s.last.is_some_and(|l| l.index >= log_id.index);
            let outcome = stored.wait_for(|s| s.install_failed || covered(s)).await.map(|s| *s);
            if !outcome.is_ok_and(|s| covered(&s)) {
                let why = format!("no stored snapshot covers entry {}, so it is not purged", log_id.index);
                return Err(io::Error::other(why));
            }
        }
        let mut b = Batch::default();
        b.put(Tree::RaftMeta, LAST_PURGED, bincode::serialize(&log_id).map_err(io_err)?);
        self.write_durably(b, "log's purge point")?;
        self.engine.log_purge(log_id.index).map_err(io_err)
    }
}
