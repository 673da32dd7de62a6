//! raftkv's black-box harness: the shipped `kv-server` binary, three (or more) processes each
//! in a network namespace of its own, clients in another speaking the public gRPC API, faults
//! injected from outside (kill -9, SIGSTOP, iptables partitions), and what the clients saw
//! checked against each consistency level's promise by kv-check, the same checks the
//! simulation applies. docs/jepsen.md says how to run it and what each fault does.
//!
//! - [`net`]: namespaces, bridge, addresses, partition rules, and the cleanup;
//! - [`members`]: the server processes: start, kill, pause, restart;
//! - [`nemesis`]: the faults and their heals;
//! - [`register`]: the register workload and its clients (kv-client);
//! - [`set`]: the set workload and its clients (the etcd-client crate);
//! - [`watch`]: the watch workload: writers, and watchers of both client crates;
//! - [`lease`]: the lease workload: leases granted, renewed and abandoned, keys observed;
//! - [`lock`]: the lock workload: one lock in turn, fenced writes (etcd-client);
//! - [`audit`]: the leader, and the converged state after healing;
//! - [`run`]: one run from setup to verdict and results directory;
//! - [`report`] and [`plot`]: the run's page, its plots, and where a failure sits.
#![cfg(not(madsim))]

pub mod audit;
pub mod lease;
pub mod lock;
pub mod members;
pub mod nemesis;
pub mod net;
pub mod plot;
pub mod register;
pub mod report;
pub mod run;
pub mod set;
pub mod watch;

/// The harness could not do its own job (set up, fault, tear down): no verdict on the store.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Setup(String),
    /// The run ended but its report could not be written.
    #[error("report: {0}")]
    Report(String),
}
