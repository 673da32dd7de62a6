//! raftkv's replicated core: everything between the client API and the disk, with no
//! client-facing gRPC.
//!
//! Layout:
//! - [`typ`]: the openraft type config, declared once, and aliases;
//! - [`rt`]: openraft's async runtime (real tokio, or madsim under `cfg(madsim)`);
//! - [`engine`]: the storage boundary with the sled engine and the in-memory engine;
//! - [`log_store`]: the Raft log and vote over an engine, durable before acknowledged;
//! - [`mvcc`]: etcd's MVCC semantics (revisions, ranges, txn, compaction) over an engine;
//! - [`state_machine`]: the openraft state machine around the MVCC store, with snapshots;
//! - [`snapshot_data`]: snapshot data as openraft moves it, files read and written in place;
//! - [`codec`]: the strict bincode decoder for stored and peer-sent values;
//! - [`request`]: the Raft payload, a batch of write requests with one result each;
//! - [`node`]: a running member: batcher, writes, forwarding, read barrier, lease and bounded reads;
//! - [`network`]: the Raft transport between members;
//! - [`ids`]: member and cluster ids derived from the cluster flags;
//! - `planted` (feature `planted-bugs`, tests only): switches that break a guarantee on purpose.

pub mod codec;
pub mod engine;
pub mod ids;
pub mod log_store;
pub mod mvcc;
pub mod network;
pub mod node;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod request;
pub mod rt;
pub mod snapshot_data;
pub mod state_machine;
pub mod typ;

pub use node::ReadRequirement;
pub use node::{BatchConfig, Node, NodeConfig, NodeError};
pub use request::{MemberAttrs, WriteRequest, WriteResponse};
pub use state_machine::KvStore;
