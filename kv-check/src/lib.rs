//! raftkv's client histories and their checks, one per guarantee of a read level
//! (docs/consistency.md), shared by the deterministic simulation and the black-box harness in
//! `jepsen/`, so both hold the store to the same promises:
//!
//! - [`history`]: what a client saw of each put, compare-and-set and read;
//! - [`requests`]: the workload's requests on the wire and what their answers mean;
//! - [`checks`]: linearizability per key (porcupine-rs), read-your-writes for sessions, the
//!   staleness bound, values nobody wrote, and acknowledged writes missing from the store;
//! - [`set`]: the set workload's history and its check (nothing acknowledged lost, nothing
//!   invented, no read missing what was acknowledged before it);
//! - [`watch`]: the watch workload's history and its check (every change seen once, in
//!   order, across reopens and failover);
//! - [`lease`]: the lease workload's history and its check (no key gone before its lease's
//!   deadline, no lease renewed once gone, every abandoned lease expired);
//! - [`lock`]: the lock workload's history and its check (one holder at a time, fencing
//!   tokens never going back);
//! - [`explain`]: a linearizability failure cut to its smallest key and shortest run, and
//!   porcupine's view of it.

pub mod checks;
pub mod explain;
pub mod history;
pub mod lease;
pub mod lock;
pub mod requests;
pub mod set;
pub mod watch;
