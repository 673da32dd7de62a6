//! kvbench: load for any etcd v3 endpoint list, raftkv's or etcd's, measured the same way.
//!
//! Layout:
//! - [`workload`]: what one operation is (put, get at a level, txn CAS, range, mixes) and how
//!   it is sent;
//! - [`run`]: the closed loop (N clients over M connections, each waiting for its answer) and
//!   the open loop (a fixed rate, latency counted from when each request was due, so a slow
//!   server cannot hide its queue: no coordinated omission);
//! - [`report`]: HDR histograms summarised as ops/s and percentiles, in JSON and Markdown;
//! - [`compare`]: the side-by-side comparison of a local 3-member raftkv and etcd
//!   ([`cluster`] starts them, [`failover`] kills their leaders, [`summary`] and [`plot`] write
//!   the report);
//! - [`lease`]: many leases kept alive, and many expiring at once under write load;
//! - [`lock`]: clients contending for one lock, acquire + release in a closed loop;
//! - [`watch`]: many watchers of one prefix under a fixed write rate: event delay, events/s and
//!   the watched member's CPU and RSS.

pub mod cluster;
pub mod compare;
pub mod failover;
pub mod lease;
pub mod lock;
pub mod plot;
pub mod report;
pub mod run;
pub mod summary;
pub mod watch;
pub mod workload;

pub use report::Report;
pub use run::{run, Spec};
pub use workload::Workload;

/// What can stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("invalid benchmark: {0}")]
    Invalid(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("report: {0}")]
    Report(String),
}
