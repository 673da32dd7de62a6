//! Conversion of every internal failure into the gRPC status a client sees. The etcd text and
//! code of each error live in `kv_api::error`; this module decides which one an internal
//! failure is, and logs what the client must not see.

use kv_api::EtcdError;
use raft_core::mvcc::MvccError;
use raft_core::NodeError;
use tonic::Status;

/// Status for a node failure. Fatal failures are logged and reported as "server stopped".
pub fn node(e: NodeError) -> Status {
    if let NodeError::Fatal(msg) = &e {
        tracing::error!("fatal node error: {msg}");
    }
    EtcdError::from(e).to_status()
}

/// Status for a local MVCC read failure. Storage faults go out as code Unknown, as etcd does
/// with errors it has no mapping for.
pub fn mvcc(e: MvccError) -> Status {
    match e {
        MvccError::Etcd(e) => e.to_status(),
        other => {
            tracing::error!("storage error while reading: {other}");
            EtcdError::Other(format!("raftkv: storage error: {other}")).to_status()
        }
    }
}

/// Status for an etcd error found while checking a request.
pub fn invalid(e: EtcdError) -> Status {
    e.to_status()
}
