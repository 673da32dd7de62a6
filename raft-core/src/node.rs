//! The node handle: one Raft member with its stores, the write batcher and the read barrier.
//!
//! Writes go through the batcher: it gathers the requests that arrive while the previous
//! proposal is in flight into one Raft entry (bounded by count and bytes), because openraft
//! 0.9.25 fsyncs each `client_write` on its own. Reads settle their consistency level here and
//! then read the local state machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kv_api::{Consistency, EtcdError};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;
use crate::log_store::LogStore;
use crate::network::LocalOnly;
use crate::request::{RequestBatch, WriteRequest, WriteResponse};
use crate::state_machine::KvStore;
use crate::typ::{NodeId, PeerNode, Raft, RaftMetrics};

/// Tuning of a node, from the server's flags.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Leader heartbeat period (etcd `--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// Minimum election timeout; the maximum is twice it (etcd `--election-timeout`).
    pub election_timeout: Duration,
    /// Applied entries between snapshots (etcd `--snapshot-count`).
    pub snapshot_count: u64,
    /// Bound on a proposal or a linearizable read (expiry: "etcdserver: request timed out").
    pub request_timeout: Duration,
    pub batch: BatchConfig,
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
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 10_000,
            request_timeout: Duration::from_secs(5),
            batch: BatchConfig::default(),
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

type Reply = oneshot::Sender<Result<WriteResponse, NodeError>>;

/// A running member. Cheap to clone.
pub struct Node<E: Engine> {
    id: NodeId,
    raft: Raft,
    store: KvStore<E>,
    writes: mpsc::Sender<(WriteRequest, Reply)>,
    request_timeout: Duration,
}

impl<E: Engine> Clone for Node<E> {
    fn clone(&self) -> Self {
        Node {
            id: self.id,
            raft: self.raft.clone(),
            store: self.store.clone(),
            writes: self.writes.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

impl<E: Engine> Node<E> {
    /// Opens the stores in `engine` and starts the Raft member. It serves once it has a leader
    /// (see [`Node::bootstrap`] for a new cluster).
    pub async fn start(config: NodeConfig, engine: Arc<E>) -> Result<Self, NodeError> {
        let raft_config = Config {
            cluster_name: "raftkv".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout.as_millis() as u64,
            election_timeout_max: 2 * config.election_timeout.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let store = KvStore::open(engine.clone()).map_err(|e| NodeError::Fatal(e.to_string()))?;
        let log = LogStore::new(engine);
        let raft = Raft::new(config.id, Arc::new(raft_config), LocalOnly, log, store.clone())
            .await
            .map_err(|e| NodeError::Fatal(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(batcher(raft.clone(), rx, config.batch));
        Ok(Node { id: config.id, raft, store, writes: tx, request_timeout: config.request_timeout })
    }

    /// Initializes a brand-new cluster with `members` (every member does this with the same
    /// set; openraft makes it safe). A no-op on a member that already has state.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), NodeError> {
        if self.raft.is_initialized().await.map_err(|e| NodeError::Fatal(e.to_string()))? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Fatal(e.to_string())),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
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

    /// Proposes one write and waits for its result. A timeout means the outcome is unknown: the
    /// write may still commit.
    pub async fn write(&self, req: WriteRequest) -> Result<WriteResponse, NodeError> {
        let (tx, rx) = oneshot::channel();
        let call = async {
            self.writes.send((req, tx)).await.map_err(|_| EtcdError::ServerStopped)?;
            rx.await.map_err(|_| NodeError::Etcd(EtcdError::ServerStopped))?
        };
        tokio::time::timeout(self.request_timeout, call).await.map_err(|_| EtcdError::Timeout)?
    }

    /// Waits until a read at `level` may be served from the local state machine; returns the
    /// level actually provided. Levels weaker than linearizable are served linearizably for now,
    /// which keeps every promise they make.
    pub async fn read_barrier(&self, level: Consistency) -> Result<Consistency, NodeError> {
        if level == Consistency::Serializable {
            return Ok(Consistency::Serializable);
        }
        let confirm = self.raft.ensure_linearizable();
        match tokio::time::timeout(self.request_timeout, confirm).await {
            Err(_) => Err(EtcdError::Timeout.into()),
            Ok(Ok(_)) => Ok(Consistency::Linearizable),
            Ok(Err(RaftError::Fatal(f))) => Err(NodeError::Fatal(f.to_string())),
            Ok(Err(RaftError::APIError(e))) => Err(match e {
                openraft::error::CheckIsLeaderError::ForwardToLeader(_) => EtcdError::NoLeader.into(),
                openraft::error::CheckIsLeaderError::QuorumNotEnough(_) => EtcdError::Timeout.into(),
            }),
        }
    }

    /// Stops Raft; pending requests fail with "server stopped". Flushes the engine.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.raft.shutdown().await.map_err(|e| NodeError::Fatal(e.to_string()))?;
        self.store.engine().flush().map_err(|e| NodeError::Fatal(e.to_string()))
    }

    /// Adds members as voters (used by multi-member bootstrap paths and tests).
    pub async fn add_voters(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), NodeError> {
        self.raft
            .change_membership(ChangeMembers::AddVoters(members), false)
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Fatal(e.to_string()))
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
        match raft.client_write(RequestBatch { requests }).await {
            Ok(resp) => {
                let results = resp.data.results;
                debug_assert_eq!(results.len(), replies.len());
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(NodeError::Etcd));
                }
            }
            Err(e) => {
                let err = match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                        if f.leader_id.is_some() {
                            EtcdError::LeaderChanged
                        } else {
                            EtcdError::NoLeader
                        }
                    }
                    RaftError::APIError(ClientWriteError::ChangeMembershipError(m)) => EtcdError::Other(m.to_string()),
                    RaftError::Fatal(_) => EtcdError::ServerStopped,
                };
                for reply in replies {
                    let _ = reply.send(Err(NodeError::Etcd(err.clone())));
                }
            }
        }
    }
}
