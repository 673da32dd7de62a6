//! The node handle: one Raft member with its stores. This file owns starting and stopping it
//! and what it shares; each path through it has its own file:
//! - [`config`]: the node's settings;
//! - [`candidacy`]: a member importing a snapshot from the leader does not stand for election;
//! - [`error`]: how its operations fail;
//! - [`write`]: the write path, the batcher that gathers requests into one Raft entry, and
//!   proposals;
//! - [`forward`]: a follower's writes and read-index requests on their way to the leader;
//! - [`read`]: the read barrier of each consistency level, leadership confirmation and lease
//!   reads;
//! - [`lease`]: the lease and staleness bookkeeping behind the lease and bounded levels;
//! - [`leases`] and [`lessor`]: etcd leases (TTLs that keys are attached to) and the leader's
//!   clock that expires them.
//!
//! Writes go to the leader: a follower forwards them over the peer transport, the leader puts
//! them through its batcher, which gathers the requests that arrive while the previous proposal
//! is in flight into one Raft entry (bounded by count and bytes), because openraft 0.9.25
//! fsyncs each `client_write` on its own. Reads settle their consistency level here (a follower
//! asks the leader for a read index) and then read the local state machine.

#[cfg(not(madsim))]
mod candidacy;
mod config;
mod error;
mod forward;
pub mod lease;
pub mod leases;
pub mod lessor;
mod read;
mod write;

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use config::{
    BatchConfig, NodeConfig, DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, DEFAULT_LEASE_CHECKPOINT_MS,
};
use error::fatal;
pub use error::{NodeError, Refusal};
use forward::{forwarder, index_asker, Forward, IndexAsk};
pub use lease::{IndexKind, ReadRequirement};
use lease::{Lease, Receipts, RestartFloor};
pub use leases::{LeaseAnswer, LeaseAsk, LeaseStatus, MAX_LEASE_TTL};
use read::{read_index_rounds_task, Confirmer, IndexReply};
use write::{batcher, Reply};

use crate::engine::Engine;
use crate::log_store::LogStore;
use crate::network::{PeerNetwork, Peers};
use crate::request::WriteRequest;
use crate::state_machine::KvStore;
use crate::typ::{NodeId, PeerNode, Raft, RaftMetrics};

/// A running member. Cheap to clone: clones share one [`Inner`].
pub struct Node<E: Engine> {
    inner: Arc<Inner<E>>,
}

impl<E: Engine> Clone for Node<E> {
    fn clone(&self) -> Self {
        Node { inner: self.inner.clone() }
    }
}

impl<E: Engine> std::ops::Deref for Node<E> {
    type Target = Inner<E>;

    fn deref(&self) -> &Inner<E> {
        &self.inner
    }
}

/// What a [`Node`] and its clones share. Its fields are the node's own.
pub struct Inner<E: Engine> {
    id: NodeId,
    raft: Raft<E>,
    store: KvStore<E>,
    peers: Peers,
    writes: mpsc::Sender<(WriteRequest, Reply)>,
    /// Writes on their way to the leader (this member follows), gathered into batches.
    forwards: mpsc::Sender<Forward>,
    /// Read-index requests on their way to the leader (this member follows), sharing one RPC
    /// among the reads queued before it is sent (None: one RPC per read).
    index_asks: Option<mpsc::Sender<IndexAsk>>,
    /// Read-index requests waiting for the next shared leadership confirmation (None: each
    /// read confirms on its own).
    read_index_queue: Option<mpsc::Sender<IndexReply>>,
    /// Leadership confirmations (quorum rounds) run for reads so far.
    read_index_rounds: Arc<AtomicU64>,
    /// The newest leadership confirmation, which serves lease reads until it expires.
    lease: Arc<parking_lot::Mutex<Option<Lease>>>,
    /// AppendEntries receipts from the leader, for bounded reads on a follower.
    receipts: Arc<parking_lot::Mutex<Receipts>>,
    /// When this member started: it refuses to vote for twice the election timeout after that.
    started: Instant,
    /// Differs on every start (wall-clock nanoseconds at start): tags receipt stamps.
    epoch: u64,
    election_timeout: Duration,
    request_timeout: Duration,
    /// Snapshot RPCs from the leader being served now (Status reports a member catching up).
    receiving: Arc<std::sync::atomic::AtomicUsize>,
    /// When an AppendEntries of an established leader was last accepted.
    heard_leader_at: Arc<parking_lot::Mutex<Option<Instant>>>,
    /// The leader's lease clock (empty while this member follows).
    lessor: Arc<parking_lot::Mutex<lessor::Lessor>>,
    /// The next lease id this member picks for a grant that names none.
    next_lease_id: AtomicI64,
    lease_checkpoint_interval: Duration,
    lease_clock: lessor::Clock,
    /// Wakes the lease clock task: a renewal waits for a checkpoint.
    renewals: Arc<tokio::sync::Notify>,
    /// (term, last checkpoint of that term committed): what renewals wait for.
    checkpointed: Arc<tokio::sync::watch::Sender<(u64, u64)>>,
    #[cfg(feature = "planted-bugs")]
    planted: crate::planted::PlantedBugs,
}

/// Room in openraft's queue of commands to the state machine (see [`Node::start`]).
const SM_QUEUE: u64 = 1 << 20;

impl<E: Engine> Node<E> {
    /// Opens the stores in `engine` and starts the Raft member. It serves once it has a leader
    /// (see [`Node::bootstrap`] for a new cluster).
    pub async fn start(config: NodeConfig, engine: Arc<E>) -> Result<Self, NodeError> {
        let election_ms = config.election_timeout.as_millis() as u64;
        // Each snapshot chunk must arrive within this; chunks are small enough for a busy disk.
        let chunk_timeout = (4 * election_ms).max(1000);
        let raft_config = Config {
            cluster_name: "raftkv".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election_ms,
            election_timeout_max: 2 * election_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            // Entries a lagging member can still fetch from the log before it needs a snapshot.
            max_in_snapshot_log_to_keep: config.snapshot_count.min(5000),
            install_snapshot_timeout: chunk_timeout,
            snapshot_max_chunk_size: config.snapshot_chunk_bytes as u64,
            max_payload_entries: config.max_payload_entries,
            // A member that returns with a stale log (restarted, partitioned, catching up by
            // snapshot) asks first whether it could win, and starts no election that would
            // only raise the term and depose a working leader.
            enable_pre_vote: Some(true),
            // A leader that restarts stands for election again rather than taking its old term
            // back. It replicates entries before its own copy is synced, so a power cut can take
            // from its log entries a quorum already holds; restored in its old term, it would
            // propose new entries at those indexes under the same log ids, and the followers,
            // which compare log ids only, would keep their own: the same index applied two ways
            // (found by jepsen's power-loss-all). A new term cannot reuse a log id.
            enable_leader_restore: Some(false),
            // openraft's core hands each commit to the state machine through this queue and
            // stops, appends and votes included, while it is full. A snapshot import holds
            // apply for its whole length (seconds), and a follower receives about one commit
            // per AppendEntries: openraft's 1,024 filled in about two seconds of writes, and
            // then the importing member answered the leader nothing until the import ended
            // (docs/benchmarks.md). A queued command is small and the queue holds only what
            // apply has not taken yet, so room for minutes of commits costs nothing otherwise.
            state_machine_channel_size: Some(SM_QUEUE),
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        LogStore::new(engine.clone()).check_format().map_err(fatal)?;
        let store = KvStore::open(engine.clone()).map_err(fatal)?;
        let cluster_id = store.init_cluster_id(config.cluster_id).map_err(fatal)?;
        let mut log = LogStore::new(engine)
            .with_member(config.id)
            .with_append_budget(config.max_append_bytes)
            .with_snapshot_position(store.stored_snapshot());
        log.check_recoverable(store.last_applied()).await.map_err(fatal)?;
        let peers = Peers::new(config.id, cluster_id, restart_floor(&mut log, config.id).await?);
        #[cfg(feature = "planted-bugs")]
        let log = log.with_planted(config.planted);
        let network = PeerNetwork { peers: peers.clone() };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, store.clone()).await.map_err(fatal)?;
        let sm = store.clone();
        peers.watch_metrics(raft.metrics(), Box::new(move || sm.last_applied()));
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(batcher(raft.clone(), rx, config.batch));
        let lessor = Arc::new(parking_lot::Mutex::new(lessor::Lessor::default()));
        let lease_clock = lessor::Clock::new(config.lease_clock_rate);
        store.set_lease_hook(leases::lease_hook(lessor.clone(), lease_clock));
        let renewals = Arc::new(tokio::sync::Notify::new());
        let checkpointed = Arc::new(tokio::sync::watch::channel((0, 0)).0);
        let clock = leases::LeaseClock {
            raft: raft.clone(),
            store: store.clone(),
            lessor: lessor.clone(),
            writes: tx.clone(),
            checkpoint_interval: config.lease_checkpoint_interval,
            credit: config.election_timeout,
            restored_term: peers.restart_floor().term,
            request_timeout: config.request_timeout,
            clock: lease_clock,
            renewals: renewals.clone(),
            checkpointed: checkpointed.clone(),
            #[cfg(feature = "planted-bugs")]
            planted: config.planted,
        };
        tokio::spawn(clock.run());
        let heard_leader_at = Arc::new(parking_lot::Mutex::new(None));
        // The simulation imports a snapshot inside the install (no import is ever under way
        // across an await), so it has no use for the task.
        #[cfg(not(madsim))]
        tokio::spawn(
            candidacy::Candidacy {
                raft: raft.clone(),
                id: config.id,
                importing: store.importing(),
                heard_leader_at: heard_leader_at.clone(),
                tick: config.heartbeat_interval,
                leaderless: 6 * config.election_timeout,
            }
            .run(),
        );
        let (forwards, forwards_rx) = mpsc::channel(4096);
        tokio::spawn(forwarder(peers.clone(), forwards_rx, config.batch, raft.metrics()));
        let read_index_rounds = Arc::new(AtomicU64::new(0));
        let lease = Arc::new(parking_lot::Mutex::new(None));
        let confirmer = Confirmer {
            floor: peers.restart_floor(),
            raft: raft.clone(),
            rounds: read_index_rounds.clone(),
            lease: lease.clone(),
            timeout: config.request_timeout,
        };
        let index_asks = config.share_read_index.then(|| {
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(index_asker(peers.clone(), rx, raft.metrics()));
            tx
        });
        let read_index_queue = config.share_read_index.then(|| {
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(read_index_rounds_task(confirmer.clone(), rx));
            tx
        });
        Ok(Node {
            inner: Arc::new(Inner {
                id: config.id,
                raft,
                store,
                peers,
                writes: tx,
                forwards,
                index_asks,
                read_index_queue,
                read_index_rounds,
                lease,
                receipts: Arc::default(),
                started: Instant::now(),
                epoch: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                election_timeout: config.election_timeout,
                request_timeout: config.request_timeout,
                receiving: Arc::default(),
                heard_leader_at,
                lessor,
                lease_clock,
                renewals,
                checkpointed,
                next_lease_id: AtomicI64::new(first_lease_id(config.id)),
                lease_checkpoint_interval: config.lease_checkpoint_interval,
                #[cfg(feature = "planted-bugs")]
                planted: config.planted,
            }),
        })
    }

    /// Initializes a brand-new cluster with `members` (every member does this with the same
    /// set; openraft makes it safe). A no-op on a member that already has state.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), NodeError> {
        if self.raft.is_initialized().await.map_err(fatal)? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(fatal(e)),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The cluster this member belongs to (kept in the state machine's meta).
    pub fn cluster_id(&self) -> u64 {
        self.peers.cluster_id()
    }

    /// The local state machine (reads after [`Node::read_barrier`]).
    pub fn store(&self) -> &KvStore<E> {
        &self.store
    }

    pub fn raft(&self) -> &Raft<E> {
        &self.raft
    }

    /// Resolves once Raft has stopped (its metrics channel closes). Peer streams read until
    /// this: a member shutting down waits for every peer stream to end, and the leader may have
    /// nothing more to send on one.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut metrics = self.raft.metrics();
        async move { while metrics.changed().await.is_ok() {} }
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Whether this member is in touch with a leader that a quorum follows: a follower that
    /// accepted an AppendEntries of its leader within two election timeouts, or a leader that a
    /// quorum acknowledged within as long. openraft keeps an isolated leader leading, and with
    /// pre-vote a follower whose leader died keeps naming it; etcd's leader steps down after an
    /// election timeout without a quorum (CheckQuorum), and clients that require a leader
    /// (`WithRequireLeader`) rely on hearing that, to move to a member that can serve them.
    pub fn has_leader(&self) -> bool {
        let (leader, term) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            (m.current_leader, m.current_term)
        };
        let recent = |t: Instant| t.elapsed() <= 2 * self.election_timeout;
        match leader {
            None => false,
            Some(l) if l != self.id => self.heard_leader_at.lock().is_some_and(recent),
            Some(_) => self.peers.confirmed_at(term).is_some_and(recent),
        }
    }

    /// Notes an AppendEntries accepted from an established leader (the peer service calls it).
    pub fn heard_leader(&self) {
        *self.heard_leader_at.lock() = Some(Instant::now());
    }

    /// Notes the answer to a streamed AppendEntries of `term` (the peer service calls it), as
    /// the unary path notes its response: any answer but a higher vote to an established leader
    /// means this member still follows it, and an accepted one that echoed a stamp of ours
    /// tells how current this member is as of that stamp.
    pub fn note_append_answer(
        &self,
        term: u64,
        committed_vote: bool,
        echo: Option<(crate::network::Stamp, u64)>,
        answer: &Result<
            openraft::raft::StreamAppendResult<crate::typ::TypeConfig>,
            openraft::error::Fatal<crate::typ::TypeConfig>,
        >,
    ) {
        if !committed_vote {
            return;
        }
        match answer {
            Ok(Ok(_)) => {
                if let Some((stamp, index)) = echo {
                    self.note_append_entries(term, index, stamp);
                }
                self.heard_leader();
            }
            Ok(Err(openraft::raft::StreamAppendError::Conflict(_))) => self.heard_leader(),
            Ok(Err(openraft::raft::StreamAppendError::HigherVote(_))) | Err(_) => {}
        }
    }

    /// The current Raft term (response headers carry it), without copying the metrics.
    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The committed log index (etcd Status.raftIndex).
    pub async fn committed_index(&self) -> u64 {
        self.raft.with_raft_state(|s| s.local_committed().map_or(0, |c| c.index)).await.unwrap_or(0)
    }

    /// Marks a snapshot RPC from the leader being served, until the guard is dropped. openraft
    /// 0.10 keeps heartbeating a member while a snapshot streams to it, so nothing needs holding
    /// off; Status reports the transfer.
    pub fn receiving_snapshot(&self) -> Receiving {
        Receiving::new(self.receiving.clone())
    }

    /// Whether a snapshot is being received or installed.
    pub fn catching_up(&self) -> bool {
        self.receiving.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Whether this member still refuses votes: for twice the election timeout after it starts,
    /// a member that may have followed a leader before a restart must not help elect another
    /// while that leader's lease may still run (openraft forgets the lease across restarts).
    pub fn refusing_votes(&self) -> bool {
        self.started.elapsed() < 2 * self.election_timeout
    }

    /// The bugs this member was started with (see [`crate::planted`]).
    #[cfg(feature = "planted-bugs")]
    pub fn planted(&self) -> crate::planted::PlantedBugs {
        self.planted
    }

    /// Snapshots installed from a leader since this process started.
    pub fn snapshots_installed(&self) -> u64 {
        self.store.snapshots_installed()
    }

    /// Leadership confirmations (quorum rounds) this member ran for reads since it started.
    pub fn read_index_rounds(&self) -> u64 {
        self.read_index_rounds.load(Ordering::Relaxed)
    }

    /// Resolves once Raft has stopped on its own, with the reason: a storage failure (a full
    /// disk, an I/O error on a write, a sync or an apply) stops it for good, and a member in that
    /// state would answer every request "server stopped" forever. Only a restart recovers it,
    /// reading back what is really on disk, so the server exits on this (kv-server).
    pub async fn failed(&self) -> String {
        let mut rx = self.raft.metrics();
        // An error means the metrics went with Raft itself.
        let _ = rx.wait_until(|m| m.running_state.is_err()).await;
        match &self.raft.metrics().borrow_watched().running_state {
            Err(fatal) => fatal.to_string(),
            Ok(()) => "Raft stopped".into(),
        }
    }

    /// Stops Raft; pending requests fail with "server stopped". Flushes the engine.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.raft.shutdown().await.map_err(fatal)?;
        self.store.flush_whole().map_err(fatal)
    }

    /// Adds members as voters (used by multi-member bootstrap paths and tests).
    pub async fn add_voters(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), NodeError> {
        self.raft.change_membership(ChangeMembers::AddVoters(members), false).await.map(|_| ()).map_err(fatal)
    }
}

/// What this member must apply before serving reads if openraft restores it as leader of the
/// term it led when it stopped (it does so when the stored vote is its own and committed).
async fn restart_floor<E: Engine>(log: &mut LogStore<E>, me: NodeId) -> Result<RestartFloor, NodeError> {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    let Some(vote) = log.read_vote().await.map_err(fatal)? else { return Ok(RestartFloor::default()) };
    if !vote.is_committed() || vote.leader_id().node_id != me {
        return Ok(RestartFloor::default());
    }
    let last = log.get_log_state().await.map_err(fatal)?.last_log_id;
    Ok(RestartFloor { term: vote.leader_id().term, index: last.map_or(0, |l| l.index) })
}

/// The first lease id member `id` picks: its id in the top bits (below the sign bit), then the
/// wall-clock time in ms, then a counter, so members and restarts pick apart (etcd's scheme).
fn first_lease_id(id: NodeId) -> i64 {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    (((id & 0x7fff) as i64) << 48) | ((ms & 0xff_ffff_ffff) << 8)
}

/// Runs `f` until `deadline`; `Err(())` when the deadline passed first. (madsim's time module
/// has no `timeout_at`.)
pub(crate) async fn within<F: std::future::Future>(deadline: Instant, f: F) -> Result<F::Output, ()> {
    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), f).await.map_err(|_| ())
}

/// Held while a snapshot RPC is served; see [`Node::receiving_snapshot`].
pub struct Receiving(Arc<std::sync::atomic::AtomicUsize>);

impl Receiving {
    fn new(count: Arc<std::sync::atomic::AtomicUsize>) -> Receiving {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Receiving(count)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
