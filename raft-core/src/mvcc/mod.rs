//! The MVCC key-value store with etcd's semantics, written once over the
//! [`crate::engine::KvEngine`] trait.
//!
//! Layout:
//! - [`keys`]: encoding of versions and of the key index's entries;
//! - [`index`]: the key index and current-key table, derived from the versions, in memory;
//! - [`view`]: the [`view::Reader`] abstraction, the stored state and the apply-time overlay;
//! - [`read`]: Range (latest, at a revision, sort, limit, filters);
//! - [`write`]: Put, DeleteRange, Txn, Compact and revision accounting;
//! - [`validate`]: the request checks etcd makes before proposing (no state needed);
//! - [`hash`]: HashKV, a checksum of the history up to a revision;
//! - [`changes`]: the changes of a revision range, read back for watches that are behind;
//! - [`lease`]: the lease table and the lease family of writes (grant, revoke, checkpoint).

pub mod changes;
pub mod hash;
pub mod index;
pub mod keys;
pub mod lease;
pub mod read;
#[cfg(test)]
pub(crate) mod testing;
pub mod validate;
pub mod view;
pub mod write;

use kv_api::EtcdError;

/// Why an MVCC operation failed: an etcd error for the client, or broken storage.
#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("storage: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("corrupt record: {0}")]
    Decode(#[from] bincode::Error),
    #[error("corrupt data: {0}")]
    Corrupt(&'static str),
}
