//! The MVCC key-value store with etcd's semantics, written once over the [`crate::engine::Engine`]
//! trait.
//!
//! Layout:
//! - [`keys`]: on-disk encoding of versions and the three kv trees;
//! - [`view`]: the [`view::Reader`] abstraction and the apply-time [`view::Overlay`];
//! - [`read`]: Range (latest, at a revision, sort, limit, filters);
//! - [`write`]: Put, DeleteRange, Txn, Compact and revision accounting;
//! - [`validate`]: the request checks etcd makes before proposing (no state needed).

pub mod keys;
pub mod read;
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
