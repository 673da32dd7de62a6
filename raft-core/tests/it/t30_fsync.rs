//! The acknowledgement path fsyncs: an append is reported durable to openraft only after
//! `db` was fsynced, and, for a value big enough to become a sled blob, the blob file and the
//! `blobs/` directory too.

use std::sync::Arc;

use openraft::storage::RaftLogStorageExt;
use raft_core::engine::SledEngine;
use raft_core::log_store::LogStore;

use crate::common::{leader, put, put_entry};

#[tokio::test]
async fn log_append_fsyncs_db_and_new_blob_files_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    let mut log = LogStore::new(engine.clone());
    let stats = engine.sync_stats();

    let (f0, db0, bf0, bd0) = stats.snapshot();
    log.blocking_append([put_entry(1, "small", b"v".to_vec())]).await.unwrap();
    let (f1, db1, _, _) = stats.snapshot();
    assert_eq!((f1 - f0, db1 - db0), (1, 1), "one durable flush with one fsync of db per append");

    log.blocking_append([put_entry(2, "big", vec![42u8; 300 * 1024])]).await.unwrap();
    let (_, db2, bf2, bd2) = stats.snapshot();
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert!(blobs >= 1, "a 300 KiB value is stored as a sled blob file");
    assert!(db2 > db1);
    assert!(bf2 - bf0 >= 1, "the new blob file was fsynced");
    assert!(bd2 - bd0 >= 1, "the blobs/ directory was fsynced");
}

#[tokio::test]
async fn a_client_write_is_acknowledged_only_after_an_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    let node = leader(engine.clone()).await;
    let (_, before, _, _) = engine.sync_stats().snapshot();
    node.write(put("k", "v")).await.unwrap();
    let (_, after, _, _) = engine.sync_stats().snapshot();
    assert!(after > before, "the put's log append fsynced db before the put returned");
    node.shutdown().await.unwrap();
}
