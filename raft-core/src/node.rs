//! The node handle: one Raft member with its stores, the write batcher, forwarding and the read
//! barrier.
//!
//! Writes go to the leader: a follower forwards them over the peer transport, the leader puts
//! them through its batcher, which gathers the requests that arrive while the previous proposal
//! is in flight into one Raft entry (bounded by count and bytes), because openraft 0.9.25
//! fsyncs each `client_write` on its own. Reads settle their consistency level here (a follower
//! asks the leader for a read index) and then read the local state machine.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_api::{Consistency, EtcdError};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::catch_up::{CatchUp, Receiving};
use crate::engine::Engine;
use crate::log_store::LogStore;
use crate::network::{PeerError, PeerNetwork, Peers, Rpc, Stamp};
use crate::reads::{IndexKind, Lease, ReadRequirement, Receipts, RestartFloor};
use crate::request::{RequestBatch, WriteRequest, WriteResponse};
use crate::state_machine::KvStore;
use crate::typ::{NodeId, PeerNode, Raft, RaftMetrics};

/// Default leader heartbeat period (ms); see docs/operations.md for how it was chosen.
pub const DEFAULT_HEARTBEAT_MS: u64 = 40;
/// Default election timeout (ms); see docs/operations.md for how it was chosen.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 100;

/// Tuning of a node, from the server's flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The cluster id computed from the flags; a store that already has one keeps its own.
    pub cluster_id: u64,
    /// Leader heartbeat period (etcd `--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// Minimum election timeout; the maximum is twice it (etcd `--election-timeout`).
    pub election_timeout: Duration,
    /// Applied entries between snapshots (etcd `--snapshot-count`).
    pub snapshot_count: u64,
    /// Bound on a proposal or a linearizable read (expiry: "etcdserver: request timed out").
    pub request_timeout: Duration,
    pub batch: BatchConfig,
    /// Whether concurrent reads share one leadership confirmation (off only to measure it).
    pub share_read_index: bool,
    /// Most stored bytes of log entries one AppendEntries carries (one entry always goes), so a
    /// catching-up follower appends it within openraft's AppendEntries timeout. No flag: the
    /// simulation lowers it to replicate in other shapes.
    pub max_append_bytes: usize,
    /// Most entries one AppendEntries carries (openraft's `max_payload_entries`); whichever of
    /// this and `max_append_bytes` is reached first ends the message. No flag, as above.
    pub max_payload_entries: u64,
    /// Bytes of snapshot data per InstallSnapshot RPC (openraft's `snapshot_max_chunk_size`).
    /// No flag, as above.
    pub snapshot_chunk_bytes: usize,
    #[cfg(feature = "planted-bugs")]
    pub planted: crate::planted::PlantedBugs,
}

/// Bounds of one batched Raft entry.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Most requests per entry; 1 disables batching (for before/after measurements).
    pub max_requests: usize,
    /// Most encoded request bytes per entry (a single larger request still goes alone), kept
    /// well under the peer transport's message limit.
    pub max_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_requests: 512, max_bytes: 2 * 1024 * 1024 }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            cluster_id: 1,
            heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            election_timeout: Duration::from_millis(DEFAULT_ELECTION_TIMEOUT_MS),
            snapshot_count: 10_000,
            request_timeout: Duration::from_secs(5),
            batch: BatchConfig::default(),
            share_read_index: true,
            max_append_bytes: crate::log_store::MAX_APPEND_BYTES,
            max_payload_entries: Config::default().max_payload_entries,
            snapshot_chunk_bytes: 1 << 20,
            #[cfg(feature = "planted-bugs")]
            planted: Default::default(),
        }
    }
}

/// Failure of a node operation: an expected etcd outcome, or a node that can no longer serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Storage failed or Raft stopped: the node is dead and must not serve.
    #[error("fatal: {0}")]
    Fatal(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<NodeError> for EtcdError {
    fn from(e: NodeError) -> EtcdError {
        match e {
            NodeError::Etcd(e) => e,
            NodeError::Fatal(_) => EtcdError::ServerStopped,
            NodeError::Config(m) => EtcdError::Other(m),
        }
    }
}

/// Why the leader refused a write or a read-index request, as it travels back to a follower.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// This member is not the leader and nothing was proposed: safe to send elsewhere.
    NotLeader,
    /// The leader could not confirm its leadership with a quorum this round (a slow or lost
    /// heartbeat); nothing happened, a read may ask again.
    Unconfirmed,
    /// The request failed with an etcd error (its outcome is as that error says).
    Etcd(EtcdError),
}

/// Runs `f` until `deadline`; `Err(())` when the deadline passed first. (madsim's time module
/// has no `timeout_at`.)
async fn within<F: std::future::Future>(deadline: Instant, f: F) -> Result<F::Output, ()> {
    tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), f).await.map_err(|_| ())
}

/// Pause before asking again for a read index the leader could not confirm.
const CONFIRM_RETRY: Duration = Duration::from_millis(5);

type Reply = oneshot::Sender<Result<WriteResponse, Refusal>>;

/// Where a read index goes: to a read waiting on this member.
type IndexReply = oneshot::Sender<Result<u64, Refusal>>;

/// A follower's request queued for the leader, to share one RPC with others of its kind.
struct ToLeader<T, A> {
    /// The leader when it was queued; if another leads by the time it would be sent, it is not
    /// sent but refused "not leader" (and tried again at the new one).
    leader: NodeId,
    node: PeerNode,
    request: T,
    /// When the client request gives up; the RPC carrying it waits no longer than its latest.
    deadline: Instant,
    reply: oneshot::Sender<A>,
}

/// A write a follower sends on to the leader (the Forward RPC). The reply is the leader's
/// answer, or the etcd error the forwarding itself failed with (its outcome as that error says).
type Forward = ToLeader<WriteRequest, Result<Result<WriteResponse, Refusal>, EtcdError>>;

/// A follower's read waiting for a read index of its kind from the leader (the ReadIndex RPC).
type IndexAsk = ToLeader<IndexKind, Result<u64, Refusal>>;

/// An answer that can say "not leader".
trait NotLeader {
    fn not_leader() -> Self;
}

impl NotLeader for Result<Result<WriteResponse, Refusal>, EtcdError> {
    fn not_leader() -> Self {
        Ok(Err(Refusal::NotLeader))
    }
}

impl NotLeader for Result<u64, Refusal> {
    fn not_leader() -> Self {
        Err(Refusal::NotLeader)
    }
}

impl<T, A: NotLeader> ToLeader<T, A> {
    /// Whether the client request behind it has given up (it timed out or was cancelled).
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Answers it "not leader": nothing was sent, so the request may go to the next leader.
    fn refuse(self) {
        let _ = self.reply.send(A::not_leader());
    }
}

/// ReadIndex RPCs a follower keeps in flight to the leader; reads that arrive meanwhile share
/// the next one. Two so a read never waits a whole round trip for an RPC that was sent just
/// before it arrived (it takes the second slot); more gave no more sharing.
const INDEX_ASKS_IN_FLIGHT: usize = 2;

/// Forward RPCs a follower keeps in flight to the leader. While they are, new writes queue and
/// go together in the next one. More than one so the follower's writes can join every proposal
/// of the leader (which has one in flight and takes what queued during it), not every other.
const FORWARDS_IN_FLIGHT: usize = 4;

/// A running member. Cheap to clone.
pub struct Node<E: Engine> {
    id: NodeId,
    raft: Raft,
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
    /// Holds elections off while this member receives or installs a snapshot.
    catch_up: Arc<CatchUp>,
    #[cfg(feature = "planted-bugs")]
    planted: crate::planted::PlantedBugs,
}

impl<E: Engine> Clone for Node<E> {
    fn clone(&self) -> Self {
        Node {
            id: self.id,
            raft: self.raft.clone(),
            store: self.store.clone(),
            peers: self.peers.clone(),
            writes: self.writes.clone(),
            forwards: self.forwards.clone(),
            index_asks: self.index_asks.clone(),
            read_index_queue: self.read_index_queue.clone(),
            read_index_rounds: self.read_index_rounds.clone(),
            lease: self.lease.clone(),
            receipts: self.receipts.clone(),
            started: self.started,
            epoch: self.epoch,
            election_timeout: self.election_timeout,
            request_timeout: self.request_timeout,
            catch_up: self.catch_up.clone(),
            #[cfg(feature = "planted-bugs")]
            planted: self.planted,
        }
    }
}

fn fatal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Fatal(e.to_string())
}

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
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        LogStore::new(engine.clone()).check_format().map_err(fatal)?;
        let store = KvStore::open(engine.clone()).map_err(fatal)?;
        let cluster_id = store.init_cluster_id(config.cluster_id).map_err(fatal)?;
        let mut log = LogStore::new(engine)
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
        // Longer than the leader waits for a snapshot chunk, plus an election timeout.
        let quiet = Duration::from_millis(chunk_timeout) + 2 * config.election_timeout;
        let catch_up = CatchUp::start(raft.clone(), quiet, config.election_timeout / 2);
        #[cfg(feature = "planted-bugs")]
        catch_up.plant(config.planted);
        Ok(Node {
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
            catch_up,
            #[cfg(feature = "planted-bugs")]
            planted: config.planted,
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

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The committed log index (etcd Status.raftIndex).
    pub async fn committed_index(&self) -> u64 {
        self.raft.with_raft_state(|s| s.committed.map_or(0, |c| c.index)).await.unwrap_or(0)
    }

    /// Proposes one write through the leader and waits for its result, at most
    /// `--request-timeout`. A timeout or "leader changed" means the outcome is unknown: the
    /// write may still commit.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteResponse, NodeError> {
        let deadline = Instant::now() + self.request_timeout;
        match within(deadline, self.route_write(req, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Timeout.into()),
        }
    }

    async fn route_write(&self, req: WriteRequest, deadline: Instant) -> Result<WriteResponse, NodeError> {
        loop {
            let (leader, node) = self.leader(deadline).await?;
            let refusal = if leader == self.id {
                self.propose(req.clone()).await
            } else {
                let (reply, rx) = oneshot::channel();
                let forward = Forward { leader, node, request: req.clone(), deadline, reply };
                self.forwards.send(forward).await.map_err(|_| EtcdError::ServerStopped)?;
                rx.await.map_err(|_| EtcdError::ServerStopped)??
            };
            match refusal {
                Ok(resp) => return Ok(resp),
                Err(Refusal::Etcd(e)) => return Err(e.into()),
                // Nothing was proposed: wait for a different leader and try there.
                Err(Refusal::NotLeader) => self.leader_moved_from(leader, deadline).await?,
                Err(Refusal::Unconfirmed) => return Err(EtcdError::Timeout.into()),
            }
        }
    }

    /// Proposes `req` through this member's batcher; refused unless it leads. Used for local
    /// writes and for writes forwarded by followers.
    pub async fn propose(&self, req: WriteRequest) -> Result<WriteResponse, Refusal> {
        let (tx, rx) = oneshot::channel();
        let stopped = Refusal::Etcd(EtcdError::ServerStopped);
        self.writes.send((req, tx)).await.map_err(|_| stopped.clone())?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(Refusal::Etcd(EtcdError::Timeout)),
            Ok(r) => r.map_err(|_| stopped)?,
        }
    }

    /// The current leader and its address, waiting for one until `deadline`.
    async fn leader(&self, deadline: Instant) -> Result<(NodeId, PeerNode), NodeError> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(f) = &m.running_state {
                    return Err(fatal(f));
                }
                if let Some(l) = m.current_leader {
                    let node = m.membership_config.membership().get_node(&l).cloned().unwrap_or_default();
                    return Ok((l, node));
                }
            }
            match within(deadline, rx.changed()).await {
                Err(_) => return Err(EtcdError::NoLeader.into()),
                Ok(Err(_)) => return Err(EtcdError::ServerStopped.into()),
                Ok(Ok(())) => {}
            }
        }
    }

    /// Waits until this member sees a leader other than `old` (or none), at most until
    /// `deadline`.
    async fn leader_moved_from(&self, old: NodeId, deadline: Instant) -> Result<(), NodeError> {
        let mut rx = self.raft.metrics();
        let wait = async { rx.wait_for(|m| m.current_leader != Some(old) || m.running_state.is_err()).await.is_ok() };
        match within(deadline, wait).await {
            Err(_) => Err(EtcdError::NoLeader.into()),
            Ok(false) => Err(EtcdError::ServerStopped.into()),
            Ok(true) => Ok(()),
        }
    }

    /// Waits until a read meeting `req` may be served from the local state machine; returns the
    /// level provided. Each level does what docs/consistency.md promises, no more.
    pub async fn read_barrier(&self, req: ReadRequirement) -> Result<Consistency, NodeError> {
        let deadline = Instant::now() + self.request_timeout;
        let level = match req.level {
            Consistency::Unspecified => Consistency::Linearizable,
            l => l,
        };
        #[cfg(feature = "planted-bugs")]
        if self.planted.local_linearizable_reads && level == Consistency::Linearizable {
            // Planted bug: no ReadIndex round, whatever this member has applied is served.
            return Ok(level);
        }
        let outcome = match level {
            Consistency::Serializable => return Ok(level),
            Consistency::Bounded => {
                return match self.check_staleness(req.max_staleness) {
                    Ok(()) => Ok(level),
                    // A leader that has not confirmed itself within the bound does so now, and
                    // serves once it has applied that round's index.
                    Err(e) if self.metrics().state == ServerState::Leader => {
                        match within(deadline, self.index_read(IndexKind::Confirmed, deadline)).await {
                            Ok(Ok(())) => Ok(level),
                            _ => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
            }
            Consistency::Session => {
                let wait = self.store.wait_for_revision(req.min_revision);
                return match within(deadline, wait).await {
                    Ok(()) => Ok(level),
                    Err(()) => Err(EtcdError::Unavailable(format!(
                        "revision {} is not applied on this member within the request timeout",
                        req.min_revision
                    ))
                    .into()),
                };
            }
            Consistency::Lease => within(deadline, self.index_read(IndexKind::Lease, deadline)).await,
            _ => within(deadline, self.index_read(IndexKind::Confirmed, deadline)).await,
        };
        match outcome {
            Ok(r) => r.map(|()| level),
            Err(()) => Err(EtcdError::Timeout.into()),
        }
    }

    /// How far behind the leader this member is (DESIGN's staleness): on the leader, the age of
    /// its last leadership confirmation (a quorum acknowledgement); on a follower, the age of
    /// the newest AppendEntries from the current leader whose commit index this member has
    /// applied, counted from when that leader was last confirmed by a quorum before sending it.
    pub fn staleness(&self) -> Option<Duration> {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        // The store's own record: openraft's metrics may publish an apply after its reply.
        let last_applied = self.store.last_applied();
        let applied = last_applied.map_or(0, |l| l.index);
        if state == ServerState::Leader {
            // A leader new in its term may not have applied what earlier leaders acknowledged
            // until it applies an entry of its own term.
            if last_applied.map(|l| l.leader_id.term) != Some(term) {
                return None;
            }
            // A leader restored at startup may not have applied what it acknowledged before.
            if !self.peers.restart_floor().covers(term, applied) {
                return None;
            }
            // Our own record of the last quorum acknowledgement, not openraft's metric: a
            // metric is only as fresh as its last publication, which a paused process does not
            // advance.
            let confirmed = self.peers.confirmed_at(term)?;
            let lease = (*self.lease.lock()).filter(|l| l.term == term).map(|l| l.since);
            return Some(confirmed.max(lease.unwrap_or(confirmed)).elapsed());
        }
        self.receipts.lock().staleness(term, applied, Instant::now())
    }

    fn check_staleness(&self, bound: Duration) -> Result<(), NodeError> {
        match self.staleness() {
            Some(s) if s <= bound => Ok(()),
            Some(s) => Err(EtcdError::Unavailable(format!(
                "member is {} ms behind the leader, more than max_staleness_ms {}",
                s.as_millis(),
                bound.as_millis()
            ))
            .into()),
            None => Err(EtcdError::Unavailable("member has no recent contact with a leader".into()).into()),
        }
    }

    /// Notes an accepted AppendEntries from the leader of `term` echoing `stamp`, one of this
    /// member's [`Node::clock_stamp`]s, with the leader's applied `index` (called by the peer
    /// service): every write acknowledged before the stamp is at or below `index`.
    pub fn note_append_entries(&self, term: u64, index: u64, stamp: Stamp) {
        // A stamp of an earlier life of this member says nothing about this one's clock.
        if stamp.epoch != self.epoch {
            return;
        }
        let at = self.started + Duration::from_micros(stamp.us);
        self.receipts.lock().record(term, index, at);
    }

    /// Now on this member's clock (peer receipt stamps).
    pub fn clock_stamp(&self) -> Stamp {
        Stamp { epoch: self.epoch, us: self.started.elapsed().as_micros() as u64 }
    }

    /// Marks a snapshot RPC from the leader being served: this member starts no election until
    /// some time after the last one (see [`crate::catch_up`]).
    pub fn receiving_snapshot(&self) -> Receiving {
        self.catch_up.receiving()
    }

    /// Notes an AppendEntries accepted from an established leader (see [`crate::catch_up`]).
    pub fn heard_leader(&self) {
        self.catch_up.heard_leader();
    }

    /// Whether elections are held off because a snapshot is being received or installed.
    pub fn catching_up(&self) -> bool {
        self.catch_up.paused()
    }

    /// Whether this member still refuses votes: for twice the election timeout after it starts,
    /// a member that may have followed a leader before a restart must not help elect another
    /// while that leader's lease may still run (openraft forgets the lease across restarts).
    pub fn refusing_votes(&self) -> bool {
        self.started.elapsed() < 2 * self.election_timeout
    }

    /// ReadIndex: learn an index that covers every write acknowledged before now from the
    /// leader (confirmed by a quorum round, or by its lease), then wait until it is applied
    /// here. Reads change nothing, so a failed attempt is retried until `deadline`; a lease
    /// the leader cannot renew is refused at once.
    async fn index_read(&self, kind: IndexKind, deadline: Instant) -> Result<(), NodeError> {
        loop {
            let (leader, node) = self.leader(deadline).await?;
            let index = if leader == self.id {
                self.read_index_of(kind).await
            } else if let Some(asks) = &self.index_asks {
                let (reply, rx) = oneshot::channel();
                asks.send(IndexAsk { leader, node, request: kind, deadline, reply })
                    .await
                    .map_err(|_| EtcdError::ServerStopped)?;
                rx.await.map_err(|_| EtcdError::ServerStopped)?
            } else {
                let timeout = deadline.saturating_duration_since(Instant::now());
                ask_read_index(&self.peers, leader, &node, kind, timeout).await
            };
            match index {
                Ok(index) => {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    return match self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "read index").await {
                        Ok(_) => Ok(()),
                        Err(openraft::metrics::WaitError::Timeout(..)) => Err(EtcdError::Timeout.into()),
                        Err(openraft::metrics::WaitError::ShuttingDown) => Err(EtcdError::ServerStopped.into()),
                    };
                }
                Err(Refusal::Etcd(e)) => return Err(e.into()),
                Err(Refusal::NotLeader) => self.leader_moved_from(leader, deadline).await?,
                Err(Refusal::Unconfirmed) if kind == IndexKind::Lease => {
                    return Err(EtcdError::Unavailable(
                        "the leader's lease has expired and it cannot confirm its leadership".into(),
                    )
                    .into())
                }
                Err(Refusal::Unconfirmed) => tokio::time::sleep(CONFIRM_RETRY).await,
            }
        }
    }

    /// On the leader: an index at least as high as every write acknowledged before the call,
    /// after confirming leadership with a quorum. Refused on a follower. Concurrent calls (local
    /// reads and followers' ReadIndex requests alike) share one confirmation round.
    pub async fn read_index(&self) -> Result<u64, Refusal> {
        let Some(queue) = &self.read_index_queue else {
            return self.confirmer().confirm().await;
        };
        let (tx, rx) = oneshot::channel();
        let stopped = Refusal::Etcd(EtcdError::ServerStopped);
        queue.send(tx).await.map_err(|_| stopped.clone())?;
        rx.await.map_err(|_| stopped)?
    }

    /// On the leader: a read index of `kind` (see [`IndexKind`]).
    pub async fn read_index_of(&self, kind: IndexKind) -> Result<u64, Refusal> {
        if kind == IndexKind::Lease {
            if let Some(index) = self.lease_index() {
                return Ok(index);
            }
        }
        self.read_index().await
    }

    /// How long a confirmation serves lease reads: the election timeout less a tenth for clock
    /// drift. Voters refuse other candidates for twice the election timeout after they
    /// acknowledged it, so this keeps a wide margin (docs/consistency.md).
    fn lease_duration(&self) -> Duration {
        self.election_timeout - self.election_timeout / 10
    }

    /// The read index of the current lease, if this member leads and the lease holds. Past half
    /// the lease, a renewal starts in the background so steady lease reads never wait.
    ///
    /// The index is the higher of the confirmation's index and what this leader has applied
    /// now: writes acknowledged since the confirmation are past the former, and a follower
    /// serving a lease read must wait for them too (the simulation found this).
    fn lease_index(&self) -> Option<u64> {
        let lease = (*self.lease.lock())?;
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        // The store's own record: openraft's metrics may publish an apply after its reply.
        let applied = self.store.last_applied().map_or(0, |l| l.index);
        let age = lease.since.elapsed();
        if state != ServerState::Leader || term != lease.term || age >= self.lease_duration() {
            return None;
        }
        if age >= self.lease_duration() / 2 {
            let node = self.clone();
            tokio::spawn(async move {
                let _ = node.read_index().await;
            });
        }
        Some(lease.index.max(applied))
    }

    fn confirmer(&self) -> Confirmer {
        Confirmer {
            floor: self.peers.restart_floor(),
            raft: self.raft.clone(),
            rounds: self.read_index_rounds.clone(),
            lease: self.lease.clone(),
            timeout: self.request_timeout,
        }
    }

    /// Leadership confirmations (quorum rounds) this member ran for reads since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.store.snapshots_installed()
    }

    pub fn read_index_rounds(&self) -> u64 {
        self.read_index_rounds.load(Ordering::Relaxed)
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
    use openraft::storage::RaftLogStorage;
    let vote = log.read_vote().await.map_err(fatal)?.unwrap_or_default();
    if !vote.is_committed() || vote.leader_id().voted_for() != Some(me) {
        return Ok(RestartFloor::default());
    }
    let last = log.get_log_state().await.map_err(fatal)?.last_log_id;
    Ok(RestartFloor { term: vote.leader_id().get_term(), index: last.map_or(0, |l| l.index) })
}

/// Runs leadership confirmations and keeps the lease they establish.
#[derive(Clone)]
struct Confirmer {
    /// Read indexes of a leader restored at startup cover its log as of then (a copy of
    /// [`Peers::restart_floor`], which never changes).
    floor: RestartFloor,
    raft: Raft,
    rounds: Arc<AtomicU64>,
    lease: Arc<parking_lot::Mutex<Option<Lease>>>,
    timeout: Duration,
}

impl Confirmer {
    /// One leadership confirmation: the read index, or why there is none. A success renews the
    /// lease from the moment the round began.
    async fn confirm(&self) -> Result<u64, Refusal> {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let term = self.raft.metrics().borrow().current_term;
        let since = Instant::now();
        let index = match tokio::time::timeout(self.timeout, self.raft.get_read_log_id()).await {
            Err(_) => return Err(Refusal::Etcd(EtcdError::Timeout)),
            // openraft's read index (its first entry of this term, or its commit index) misses
            // entries it acknowledged before a restart as leader of the same term.
            Ok(Ok((read_log_id, _applied))) => self.floor.raise(term, read_log_id.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => return Err(Refusal::NotLeader),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => return Err(Refusal::Unconfirmed),
            Ok(Err(RaftError::Fatal(_))) => return Err(Refusal::Etcd(EtcdError::ServerStopped)),
        };
        let mut lease = self.lease.lock();
        if lease.is_none_or(|l| l.since < since) {
            *lease = Some(Lease { since, term, index });
        }
        Ok(index)
    }
}

/// Runs leadership confirmations one after another; each serves every request that was
/// queued before it started. That is exactly what each of them needs: the index comes from a
/// confirmation that began after the read arrived, so it covers every write acknowledged
/// before the read. openraft 0.9 runs a quorum round per call, so without this every read
/// would cost one.
async fn read_index_rounds_task(confirmer: Confirmer, mut rx: mpsc::Receiver<IndexReply>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let outcome = confirmer.confirm().await;
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }
}

/// Gathers queued writes into one entry per proposal. While `client_write` runs, new requests
/// queue up; they form the next batch.
async fn batcher(raft: Raft, mut rx: mpsc::Receiver<(WriteRequest, Reply)>, cfg: BatchConfig) {
    let mut carry: Option<(WriteRequest, Reply)> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = first.0.encoded_len();
        let mut batch = vec![first];
        while batch.len() < cfg.max_requests.max(1) {
            match rx.try_recv() {
                Ok(p) => {
                    let len = p.0.encoded_len();
                    if bytes + len > cfg.max_bytes {
                        carry = Some(p);
                        break;
                    }
                    bytes += len;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let outcome = propose_unless_deposed(&raft, RequestBatch::new(&requests)).await;
        match outcome {
            Ok(results) => {
                debug_assert_eq!(results.len(), replies.len());
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(Refusal::Etcd));
                }
            }
            Err(refusal) => {
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
    }
}

/// Asks `leader` for a read index of `kind`. A timeout is final (the read times out); any other
/// failure is taken as "not the leader", so the read waits for another leader and asks again.
async fn ask_read_index(
    peers: &Peers,
    leader: NodeId,
    node: &PeerNode,
    kind: IndexKind,
    timeout: Duration,
) -> Result<u64, Refusal> {
    match peers.call(leader, node, Rpc::ReadIndex, &kind, timeout).await {
        Ok(reply) => reply,
        Err(PeerError::Timeout { .. }) => Err(Refusal::Etcd(EtcdError::Timeout)),
        Err(_) => Err(Refusal::NotLeader),
    }
}

/// Hands out the RPC slots to each leader, `per_leader` at a time.
///
/// Why per leader and why watch the leader: RPCs to a leader that has just been cut off hang
/// until their timeout. With one pool for all leaders, they held every slot and requests for
/// the new leader waited behind them for up to the request timeout.
struct Slots {
    per_leader: usize,
    pools: HashMap<NodeId, Arc<tokio::sync::Semaphore>>,
    metrics: tokio::sync::watch::Receiver<RaftMetrics>,
}

impl Slots {
    fn new(per_leader: usize, metrics: tokio::sync::watch::Receiver<RaftMetrics>) -> Slots {
        Slots { per_leader, pools: HashMap::new(), metrics }
    }

    /// Takes the next request that is still wanted (from `carry`, else `rx`) and a slot for
    /// its leader. A request whose leader stops leading before a slot frees up is refused
    /// "not leader" here. None once `rx` is closed.
    async fn next<T, A: NotLeader>(
        &mut self,
        carry: &mut Option<ToLeader<T, A>>,
        rx: &mut mpsc::Receiver<ToLeader<T, A>>,
    ) -> Option<(ToLeader<T, A>, tokio::sync::OwnedSemaphorePermit)> {
        loop {
            let first = match carry.take() {
                Some(q) => q,
                None => rx.recv().await?,
            };
            if first.abandoned() {
                continue;
            }
            let leader = first.leader;
            let pool =
                self.pools.entry(leader).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_leader)));
            let mut metrics = self.metrics.clone();
            tokio::select! {
                permit = pool.clone().acquire_owned() => {
                    return Some((first, permit.expect("the semaphore is never closed")));
                }
                _ = metrics.wait_for(|m| m.current_leader != Some(leader)) => first.refuse(),
            }
        }
    }
}

/// Adds what queued behind `first` to its batch while `fits` (same leader, within bounds); the
/// first request that does not fit is left in `carry`. Requests already given up are dropped.
fn gather<T, A: NotLeader>(
    first: ToLeader<T, A>,
    carry: &mut Option<ToLeader<T, A>>,
    rx: &mut mpsc::Receiver<ToLeader<T, A>>,
    mut fits: impl FnMut(&[ToLeader<T, A>], &ToLeader<T, A>) -> bool,
) -> Vec<ToLeader<T, A>> {
    let mut batch = vec![first];
    while let Ok(q) = rx.try_recv() {
        if q.abandoned() {
            continue;
        }
        if q.leader != batch[0].leader || !fits(&batch, &q) {
            *carry = Some(q);
            break;
        }
        batch.push(q);
    }
    batch
}

/// The RPC timeout of a batch: what is left until its latest request deadline.
fn batch_timeout<T, A>(batch: &[ToLeader<T, A>]) -> Duration {
    let latest = batch.iter().map(|q| q.deadline).max().unwrap_or_else(Instant::now);
    latest.saturating_duration_since(Instant::now())
}

/// Resolves once every one of `replies` has been dropped by its waiter: nobody wants the
/// answer, so the RPC is abandoned.
async fn all_abandoned<T>(replies: &mut [oneshot::Sender<T>]) {
    for reply in replies {
        reply.closed().await;
    }
}

/// A follower's ReadIndex requests, shared: one RPC answers every read that was queued before
/// it was sent. That is all each of them needs: the leader confirms its leadership after the
/// RPC arrives, so after every one of those reads arrived. A read arriving while an RPC is in
/// flight waits for a later one. One RPC per read made each linearizable read on a follower
/// cost the leader a peer request.
async fn index_asker(
    peers: Peers,
    mut rx: mpsc::Receiver<IndexAsk>,
    metrics: tokio::sync::watch::Receiver<RaftMetrics>,
) {
    let mut slots = Slots::new(INDEX_ASKS_IN_FLIGHT, metrics);
    let mut carry: Option<IndexAsk> = None;
    while let Some((first, permit)) = slots.next(&mut carry, &mut rx).await {
        let (leader, node, kind) = (first.leader, first.node.clone(), first.request);
        let batch = gather(first, &mut carry, &mut rx, |_, a| a.request == kind);
        let timeout = batch_timeout(&batch);
        let mut replies: Vec<_> = batch.into_iter().map(|a| a.reply).collect();
        let peers = peers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let index = tokio::select! {
                index = ask_read_index(&peers, leader, &node, kind, timeout) => index,
                () = all_abandoned(&mut replies) => return,
            };
            for reply in replies {
                let _ = reply.send(index.clone());
            }
        });
    }
}

/// Sends queued writes on to the leader, as many in one Forward RPC as queued (bounded like a
/// Raft entry, and only writes with small answers together), with up to [`FORWARDS_IN_FLIGHT`]
/// RPCs at once to each leader. One RPC per write made forwarding the largest CPU cost of a put
/// that arrives at a follower.
async fn forwarder(
    peers: Peers,
    mut rx: mpsc::Receiver<Forward>,
    cfg: BatchConfig,
    metrics: tokio::sync::watch::Receiver<RaftMetrics>,
) {
    let mut slots = Slots::new(FORWARDS_IN_FLIGHT, metrics);
    let mut carry: Option<Forward> = None;
    while let Some((first, permit)) = slots.next(&mut carry, &mut rx).await {
        let mut bytes = first.request.encoded_len();
        let batch = if first.request.answer_is_small() {
            gather(first, &mut carry, &mut rx, |batch, f| {
                let len = f.request.encoded_len();
                let fits =
                    f.request.answer_is_small() && batch.len() < cfg.max_requests && bytes + len <= cfg.max_bytes;
                if fits {
                    bytes += len;
                }
                fits
            })
        } else {
            vec![first]
        };
        let timeout = batch_timeout(&batch);
        let peers = peers.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (leader, node) = (batch[0].leader, batch[0].node.clone());
            let (requests, mut replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|f| (f.request, f.reply)).unzip();
            let call =
                peers.call::<_, Vec<Result<WriteResponse, Refusal>>>(leader, &node, Rpc::Forward, &requests, timeout);
            let answer = tokio::select! {
                answer = call => answer,
                // Every client gave up (timed out: outcome unknown to them already).
                () = all_abandoned(&mut replies) => return,
            };
            match answer {
                Ok(results) if results.len() == replies.len() => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                outcome => {
                    let err = match outcome {
                        // The leader this member knew is gone and never got the writes: "no
                        // leader" tells the clients they may safely send them again.
                        Err(PeerError::NotConnected { .. }) => EtcdError::NoLeader,
                        // The connection broke mid-call: whether the leader got them is unknown.
                        Err(PeerError::Unreachable { .. }) => EtcdError::LeaderChanged,
                        Err(PeerError::Timeout { .. }) => EtcdError::Timeout,
                        Err(e) => EtcdError::Other(e.to_string()),
                        Ok(results) => EtcdError::Other(format!(
                            "leader answered {} forwarded writes with {} results",
                            replies.len(),
                            results.len()
                        )),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

/// Proposes one batch. If this member stops leading while the batch is in flight, its waiters
/// get "leader changed" at once rather than waiting for the new leader to commit or truncate the
/// entry (openraft 0.9 keeps them waiting); the outcome is unknown, as with a timeout.
async fn propose_unless_deposed(raft: &Raft, batch: RequestBatch) -> Result<Vec<crate::request::WriteResult>, Refusal> {
    let mut metrics = raft.metrics();
    let (led, term) = {
        let m = metrics.borrow_and_update();
        (m.state == ServerState::Leader, m.current_term)
    };
    let write = raft.client_write(batch);
    let deposed = async {
        if !led {
            return std::future::pending().await;
        }
        let _ = metrics.wait_for(|m| m.state != ServerState::Leader || m.current_term != term).await;
    };
    tokio::select! {
        r = write => match r {
            Ok(resp) => Ok(resp.data.results),
            // Rejected before appending, or truncated by a new leader: never committed.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(Refusal::NotLeader),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(m))) => {
                Err(Refusal::Etcd(EtcdError::Other(m.to_string())))
            }
            Err(RaftError::Fatal(_)) => Err(Refusal::Etcd(EtcdError::ServerStopped)),
        },
        () = deposed => Err(Refusal::Etcd(EtcdError::LeaderChanged)),
    }
}
