//! openraft's storage test suite on both engines.

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use raft_core::engine::{MemEngine, SledEngine};
use raft_core::log_store::LogStore;
use raft_core::typ::{StorageError, TypeConfig};
use raft_core::KvStore;
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledEngine>, KvStore<SledEngine>, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore<SledEngine>, KvStore<SledEngine>), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(SledEngine::open(dir.path()).expect("open sled"));
        Ok((dir, LogStore::new(engine.clone()), KvStore::open(engine)?))
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, LogStore<MemEngine>, KvStore<MemEngine>, ()> for MemBuilder {
    async fn build(&self) -> Result<((), LogStore<MemEngine>, KvStore<MemEngine>), StorageError> {
        let engine = Arc::new(MemEngine::new());
        Ok(((), LogStore::new(engine.clone()), KvStore::open(engine)?))
    }
}

#[test]
fn openraft_suite_passes_on_the_sled_engine() {
    Suite::test_all(SledBuilder).expect("suite");
}

#[test]
fn openraft_suite_passes_on_the_memory_engine() {
    Suite::test_all(MemBuilder).expect("suite");
}
