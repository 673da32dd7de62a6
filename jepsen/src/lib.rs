//! raftkv's black-box harness: the shipped `kv-server` binary, three (or more) processes each
//! in a network namespace of its own, clients in another speaking the public gRPC API, faults
//! injected from outside (kill -9, SIGSTOP, iptables partitions), and what the clients saw
//! checked against each consistency level's promise by kv-check, the same checks the
//! simulation applies. docs/jepsen.md says how to run it and what each fault does.
//!
//! - [`net`]: namespaces, bridge, addresses, partition rules, and the cleanup;
//! - [`members`]: the server processes: start, kill, pause, restart;
//! - [`nemesis`]: the faults and their heals;
//! - [`register`]: the register workload and its clients;
//! - [`audit`]: the leader, and the converged state after healing;
//! - [`run`]: one run from setup to verdict and results directory.
#![cfg(not(madsim))]

pub mod audit;
pub mod members;
pub mod nemesis;
pub mod net;
pub mod register;
pub mod run;

/// The harness could not do its own job (set up, fault, tear down): no verdict on the store.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Setup(String),
}
