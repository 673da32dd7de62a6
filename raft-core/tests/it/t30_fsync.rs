//! The acknowledgement path syncs: a log append is reported durable to openraft only after the
//! log's own file was synced, and a flush of the trees fsyncs sled's data file and, for a value
//! big enough to become a sled blob, the blob file and the `blobs/` directory too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use raft_core::engine::{Batch, Engine, KvEngine, RaftEngine, SledEngine, Tree};
use raft_core::log_store::LogStore;

use crate::common::{leader, put, put_entry};

#[tokio::test]
async fn a_log_append_syncs_the_log_alone_before_it_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    let mut log = LogStore::new(engine.clone());
    let stats = engine.sync_stats();

    let (flushes, db, _, _) = stats.snapshot();
    let syncs = stats.log_syncs.load(Ordering::SeqCst);
    log.blocking_append([put_entry(1, "small", b"v".to_vec())]).await.unwrap();
    log.blocking_append([put_entry(2, "big", vec![42u8; 300 * 1024])]).await.unwrap();
    assert_eq!(stats.log_syncs.load(Ordering::SeqCst) - syncs, 2, "one log sync per append");
    assert_eq!(stats.snapshot().0 - flushes, 0, "sled is not flushed on the append path");
    assert_eq!(stats.snapshot().1 - db, 0);
    drop(log);
    drop(engine);
    // What was acknowledged is in the log's files when the member opens again.
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    assert_eq!(engine.log_last().unwrap().map(|(i, _)| i), Some(2));
}

#[tokio::test]
async fn a_flush_fsyncs_db_and_new_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let engine = SledEngine::open(dir.path()).unwrap();
    let stats = engine.sync_stats();
    let (f0, db0, bf0, bd0) = stats.snapshot();
    let mut b = Batch::default();
    b.put(Tree::Members, b"big".to_vec(), vec![42u8; 300 * 1024]);
    engine.write(b).unwrap();
    engine.flush().unwrap();
    let (f1, db1, bf1, bd1) = stats.snapshot();
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert!(blobs >= 1, "a 300 KiB value is stored as a sled blob file");
    assert_eq!((f1 - f0, db1 - db0), (1, 1), "one durable flush with one fsync of db");
    assert!(bf1 - bf0 >= 1, "the new blob file was fsynced");
    assert!(bd1 - bd0 >= 1, "the blobs/ directory was fsynced");
}

#[tokio::test]
async fn a_client_write_is_acknowledged_only_after_a_log_sync() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    let node = leader(engine.clone()).await;
    let before = engine.sync_stats().log_syncs.load(Ordering::SeqCst);
    node.write(put("k", "v")).await.unwrap();
    let after = engine.sync_stats().log_syncs.load(Ordering::SeqCst);
    assert!(after > before, "the put's log append synced the log before the put returned");
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_follower_syncs_entries_from_the_leader_before_its_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    // Member 2 receiving entries proposed by member 1 (the leader of `put_entry`'s log ids).
    let mut log = LogStore::new(engine.clone()).with_member(2);
    let syncs = engine.sync_stats().log_syncs.load(Ordering::SeqCst);
    let (tx, mut rx) = <openraft_rt_tokio::TokioOneshot as openraft::async_runtime::Oneshot>::channel();
    log.append([put_entry(1, "k", b"v".to_vec())], openraft::storage::IOFlushed::signal(tx)).await.unwrap();
    assert_eq!(engine.sync_stats().log_syncs.load(Ordering::SeqCst) - syncs, 1, "synced in the append");
    assert!(matches!(rx.try_recv(), Ok(Ok(()))), "reported durable before the append returned");
    drop(log);
    drop(engine);
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    assert_eq!(engine.log_last().unwrap().map(|(i, _)| i), Some(1));
}
