//! The replicated state machine: the MVCC store plus the meta that must move with it. This
//! file owns the store handle: opening it, and the reads served from it.
//!
//! Where each concern lives:
//! - [`meta`]: the state-machine meta and the keys it is stored under;
//! - [`recovery`]: the torn mark, restoring a torn state, rebuilding the key index at open;
//! - [`apply`]: applying committed entries, one file per request family;
//! - [`events`]: what apply changed, published to subscribers (the Watch service's source);
//! - [`build`] and [`install`]: building a snapshot, and installing one from the leader;
//! - [`format`]: the snapshot data's layout and its format version;
//! - [`raft`]: openraft's `RaftStateMachine` over all of the above.
//!
//! Each `apply` call lands as one engine batch holding the stored kv changes of its entries and the
//! meta they produced (revision, compact revision, last applied log id, membership). Apply does
//! not flush: the log store records the committed index and a restart re-applies what the
//! engine lost.
//!
//! The batch is written op by op ([`crate::engine::KvEngine::write_relaxed`]): an atomic batch in sled seals and
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

mod apply;
mod build;
pub mod events;
pub(crate) mod format;
mod install;
mod meta;
mod raft;
mod recovery;

use std::ops::Bound;
use std::sync::Arc;

use kv_api::etcdserverpb::{RangeRequest, RangeResponse, TxnRequest, TxnResponse};
use parking_lot::RwLock;

use crate::engine::{Batch, Engine, Tree};
use crate::mvcc::index::KeyIndex;
use crate::mvcc::read;
use crate::mvcc::view::{Overlay, Stored};
use crate::mvcc::write::Writer;
use crate::mvcc::MvccError;
use crate::request::MemberAttrs;
use crate::typ::{LogId, SnapshotMeta, StorageError};
use events::Events;
pub use format::FORMAT_VERSION as SNAPSHOT_FORMAT_VERSION;
use meta::{decode, encode, load_meta, sm_read_err, sm_write_err, CLUSTER_ID, SNAP_META, TORN};
pub use meta::{SmMeta, StoredSnapshot};
use recovery::{rebuild_index, restore};

struct Shared<E> {
    engine: Arc<E>,
    /// The key index and current-key table, derived from the stored versions.
    index: KeyIndex,
    /// Subscribers to what apply changes.
    events: Events,
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
    /// The last log id applied, kept beside the gate so that the read paths that ask for it per
    /// request (lease reads, lease renewals) never wait for the gate while an apply or a
    /// snapshot holds it.
    applied: parking_lot::Mutex<Option<LogId>>,
    /// Told of every grant and revoke once applied: the leader's lease clock.
    lease_hook: std::sync::OnceLock<LeaseHook>,
    /// True while a snapshot from the leader replaces the state ([`KvStore::importing`]).
    importing: tokio::sync::watch::Sender<bool>,
}

/// A lease change an apply made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseApplied {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// Called after each apply that granted or revoked leases, once its writes are visible to
/// readers (so that a reader of the lease table that missed a change is told of it after).
pub type LeaseHook = Box<dyn Fn(&[LeaseApplied]) + Send + Sync>;

/// The state machine. Clones share it: openraft owns one, the server reads through another.
pub struct KvStore<E: Engine> {
    shared: Arc<Shared<E>>,
}

impl<E: Engine> Clone for KvStore<E> {
    fn clone(&self) -> Self {
        KvStore { shared: self.shared.clone() }
    }
}

/// A lock guard taken at once when `now` got it, otherwise waited for through
/// [`crate::rt::blocking`], so a wait never holds up the runtime's other tasks.
fn without_stalling<G>(now: Option<G>, wait: impl FnOnce() -> G) -> G {
    now.unwrap_or_else(|| crate::rt::blocking(wait))
}

impl<E: Engine> KvStore<E> {
    /// Opens the state machine stored in `engine`.
    pub fn open(engine: Arc<E>) -> Result<Self, StorageError> {
        let index = KeyIndex::default();
        let mut meta = load_meta(&*engine)?;
        if meta.torn {
            // The restore imports the snapshot, which derives the key index as it goes.
            restore(&*engine, &index)?;
            meta = load_meta(&*engine)?;
        } else {
            rebuild_index(&*engine, &index, &meta)?;
        }
        let (revision, _) = tokio::sync::watch::channel(meta.revision);
        let meta_applied = meta.last_applied;
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
                index,
                events: Events::default(),
                gate: RwLock::new(meta),
                history: RwLock::new(()),
                revision,
                installed: Default::default(),
                lease_hook: Default::default(),
                applied: parking_lot::Mutex::new(meta_applied),
                snapshot,
                importing: tokio::sync::watch::channel(false).0,
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

    /// Whether a snapshot from the leader is replacing the state now: from when it is stored
    /// until the import ends, which holds the state machine (no apply, no read) and can take
    /// seconds. The node keeps such a member from leading (`node::candidacy`).
    pub fn importing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.importing.subscribe()
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

    /// The stored state as the MVCC code reads it: the engine's trees and the key index.
    fn stored(&self) -> Stored<'_, E> {
        Stored { engine: &*self.shared.engine, index: &self.shared.index }
    }

    /// Subscribes to what apply changes (see [`events`]), with the revision the subscription
    /// starts after: every change past it is delivered, or announced as one to read from
    /// storage; anything published at or below it is already in the state and can be skipped.
    pub fn subscribe(&self) -> (tokio::sync::broadcast::Receiver<Arc<events::Applied>>, i64) {
        let rx = self.shared.events.subscribe();
        let revision = self.read_gate().revision;
        (rx, revision)
    }

    /// Live keys in the current state.
    pub fn live_keys(&self) -> usize {
        let _g = self.read_gate();
        self.shared.index.live_keys()
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
        *self.shared.applied.lock()
    }

    /// The applied revision, without the gate (response headers read it per request).
    pub fn revision(&self) -> i64 {
        *self.shared.revision.borrow()
    }

    /// A copy of the current meta.
    pub fn meta(&self) -> SmMeta {
        self.read_gate().clone()
    }

    /// Runs `f` on the stored state and its revisions while nothing can remove versions (a
    /// compaction or an install waits), for readers of the whole history such as HashKV.
    pub fn with_history<T>(&self, f: impl FnOnce(&Stored<'_, E>, read::Revisions) -> T) -> T {
        let _history = self.shared.history.read();
        let revs = self.read_gate().revisions();
        f(&self.stored(), revs)
    }

    /// The changes of keys in `range` at revisions `from..=upto` (see [`crate::mvcc::changes`]),
    /// read while nothing can remove versions.
    pub fn changes(
        &self,
        range: &read::KeyRange,
        from: i64,
        upto: i64,
        with_prev: bool,
        limit: crate::mvcc::changes::ChunkLimit,
    ) -> Result<crate::mvcc::changes::Changes, MvccError> {
        self.with_history(|stored, revs| crate::mvcc::changes::read(stored, range, from, upto, with_prev, limit, revs))
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
        serving(&meta)?;
        read::range(&self.stored(), req, meta.revisions())
    }

    /// Lease `id` and the keys attached to it, as this member has applied them.
    pub fn lease(&self, id: i64) -> Result<Option<crate::mvcc::lease::WithKeys>, MvccError> {
        let meta = self.read_gate();
        serving(&meta)?;
        crate::mvcc::lease::with_keys(&self.stored(), id)
    }

    /// Sets what is told of lease grants and revokes as they are applied (once; the node's lease
    /// clock).
    pub fn set_lease_hook(&self, hook: LeaseHook) {
        if self.shared.lease_hook.set(hook).is_err() {
            panic!("the lease hook is set once");
        }
    }

    /// Every lease this member has applied, by id, with what it had left at the last
    /// checkpoint.
    pub fn leases(&self) -> Result<Vec<crate::mvcc::lease::LeaseInfo>, MvccError> {
        let meta = self.read_gate();
        serving(&meta)?;
        crate::mvcc::lease::table(&self.stored())
    }

    /// A read-only txn (only Range ops) against the local state, without going through Raft.
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let meta = self.read_gate();
        serving(&meta)?;
        let stored = self.stored();
        let mut view = Overlay::new(&stored);
        let mut w = Writer { view: &mut view, revs: meta.revisions(), changes: None };
        let resp = w.txn(req)?;
        debug_assert!(view.into_changes().stored.is_empty(), "read_txn was given a txn that writes");
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
}

/// A state holding part of a failed apply or import is not served, applied to, exported or
/// replaced: Raft stops this member at its next apply, and until then a read could see half
/// of a write.
fn serving(meta: &SmMeta) -> Result<(), MvccError> {
    match meta.apply_failed {
        false => Ok(()),
        true => Err(MvccError::Corrupt("this member's state holds part of a failed write; the member is stopping")),
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
