//! raftkv's deterministic simulation: real members (kv-server's library, raft-core's in-memory
//! engine) on simulated nodes, clients speaking the public gRPC API, seed-driven faults, and
//! histories checked after the simulation returns.
//!
//! Layout:
//! - [`cluster`]: members on their own simulated nodes and IPs; crash, restart, pause,
//!   isolate, partition, heal, and who leads;
//! - [`nemesis`]: the faults, applied one at a time at random from a scenario's set;
//! - [`workload`]: clients at every read level doing puts, compare-and-set and reads;
//! - [`checks`]: one check per guarantee over what the clients saw (porcupine-rs for the
//!   linearizable levels), run outside the simulation (kv-check, shared with jepsen/);
//! - [`watch`]: watchers through kv-client's resuming watch, checked against the audit;
//! - [`leases`]: lease holders that renew and abandon short leases, checked for keys that
//!   vanish early, deletes that are not exactly once, and leases that outlive healing;
//! - [`clients`]: clients on nodes of their own, and connections to a random member;
//! - [`session`]: a lock or election client's lease, kept alive and sometimes abandoned;
//! - [`locks`]: lockers writing a resource guarded by their fencing tokens, checked for grants
//!   to anyone but the queue's head and for guarded writes that got through when stale;
//! - [`elections`]: candidates that campaign, proclaim and resign, and observers, checked for
//!   two leaders at one revision and for observers told anything but the history's sequence;
//! - [`history`]: a prefix's history read back after a run, and a queue's head replayed from it;
//! - [`audit`]: after healing, do the members agree and is every acknowledged write there;
//! - [`scenario`]: the named scenarios and the seed runner with its `sim-digest` lines.
//!
//! Everything here exists only under `--cfg madsim`.
#![cfg(madsim)]

pub mod audit;
pub mod clients;
pub mod cluster;
pub mod elections;
pub mod history;
pub mod leases;
pub mod locks;
pub mod nemesis;
pub mod scenario;
pub mod session;
pub mod watch;
pub mod workload;

/// The checks live in kv-check, shared with the jepsen harness.
pub use kv_check::checks;
