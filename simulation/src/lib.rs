//! raftkv's deterministic simulation: real members (kv-server's library, raft-core's in-memory
//! engine) on simulated nodes, clients speaking the public gRPC API, seed-driven faults, and
//! histories checked after the simulation returns.
//!
//! Layout:
//! - [`cluster`]: members on their own simulated nodes and IPs; crash, restart, isolate, heal;
//! - [`history`]: what clients saw, and its linearizability check (porcupine-rs), run outside
//!   the simulation (the checker uses threads and wall-clock budgets).
//!
//! Everything here exists only under `--cfg madsim`.
#![cfg(madsim)]

pub mod cluster;
pub mod history;
