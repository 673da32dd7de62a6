//! A node's settings: timing, batching and limits, as the server's flags set them.

use std::time::Duration;

use openraft::Config;

use crate::typ::NodeId;

/// Default leader heartbeat period (ms); see docs/operations.md for how it was chosen.
pub const DEFAULT_HEARTBEAT_MS: u64 = 40;
/// Default election timeout (ms); see docs/operations.md for how it was chosen.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 100;

/// Default lease checkpoint interval (ms); docs/coordination.md explains the choice.
pub const DEFAULT_LEASE_CHECKPOINT_MS: u64 = 500;

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
    /// How often the leader writes its lease clock to the log (see [`super::leases`]): an
    /// abandoned lease may outlive its TTL by this much across a leader change.
    pub lease_checkpoint_interval: Duration,
    /// The lease clock runs at this rate of the member's monotonic clock: 1 but in the
    /// simulation, which tests leases under clock drift. No flag.
    pub lease_clock_rate: f64,
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
            lease_checkpoint_interval: Duration::from_millis(DEFAULT_LEASE_CHECKPOINT_MS),
            lease_clock_rate: 1.0,
            #[cfg(feature = "planted-bugs")]
            planted: Default::default(),
        }
    }
}
