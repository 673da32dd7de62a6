//! raftkv's wire API, shared by the server, the embedded node and the clients.
//!
//! Layout:
//! - [`etcdserverpb`], [`mvccpb`]: generated from our own `.proto` files, which describe the etcd
//!   v3 API with etcd's package, service, message names and field numbers, plus raftkv extension
//!   fields numbered from 1000 (stock clients skip them).
//! - [`raftkvpb`]: the internal peer protocol between members (Raft RPCs, forwarded writes, read
//!   index), separate from the client API.
//!   `mvccpb::Event` alone is written by hand, so a server can encode an event once for many
//!   watchers.
//! - [`error`]: every etcd error raftkv can return, with etcd's exact text and gRPC code — the one
//!   table that maps errors to the wire.
//! - [`Consistency`]: the read consistency levels (the generated wire enum).
//! - [`KvApi`]: the operations both the remote client and an embedded member offer.
//!
//! This crate depends on nothing internal.

pub mod api;
pub mod error;
mod watch_event;

/// etcd's `mvccpb` package: keys, values and their revisions. `Event` is written by hand
/// (see `watch_event.rs`), the rest is generated.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    pub use crate::watch_event::{event, Event};
}

/// etcd's `etcdserverpb` package: the KV, Cluster and Maintenance services.
pub mod etcdserverpb {
    #![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service (`v3lockpb`): locks held by keys on leases.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service (`v3electionpb`): leader election on leases.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// raftkv's internal peer protocol (`raftkvpb.Peer`), served on the peer port.
pub mod raftkvpb {
    tonic::include_proto!("raftkvpb");
}

pub use api::{KvApi, WatchEvents};
pub use error::EtcdError;
pub use etcdserverpb::Consistency;
