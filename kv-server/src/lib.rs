//! raftkv server: etcd v3 compatible gRPC services over [`raft_core`].
//!
//! Layout:
//! - [`config`]: flags (etcd's names) and the TOML config file;
//! - [`server`]: assembles and runs a member ([`server::run`]);
//! - [`service`]: the KV, Maintenance and Cluster services;
//! - [`error`]: internal failures to gRPC statuses;
//! - [`net`]: binding and serving the client port (real or simulated);
//! - [`authority`]: repairs the URL-shaped HTTP/2 `:authority` etcdctl 3.4 sends;
//! - [`embedded`]: a member used in process through [`kv_api::KvApi`].
//!
//! The `kv-server` binary only parses flags, sets up logging and signals, and calls
//! [`server::run`].

// openraft 0.10's futures nest deeper than the compiler's default layout query depth allows
// under madsim's tonic (the lease, lock and election handlers await the node's Raft calls).
#![recursion_limit = "256"]

pub mod authority;
pub mod config;
pub mod embedded;
pub mod error;
pub mod net;
pub mod server;
pub mod service;

pub use config::ServerConfig;
pub use embedded::{embed, embed_with_engine, Embedded};
pub use server::{run, run_with_engine, start, start_with_engine, Running, ServerError};
