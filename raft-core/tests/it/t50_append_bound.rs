//! What one AppendEntries carries is bounded by bytes, not only by openraft's entry count: a
//! catching-up follower must get messages it can append within the AppendEntries timeout.

use std::sync::Arc;

use openraft::storage::RaftLogStorageExt;
use openraft::RaftLogReader;
use raft_core::engine::MemEngine;
use raft_core::log_store::{LogStore, MAX_APPEND_BYTES};

use crate::common::{log_id, put_entry};

#[tokio::test]
async fn replication_reads_stop_at_the_byte_budget() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine);
    // Each entry a bit over a third of the budget: three of them reach it.
    let value = vec![7u8; MAX_APPEND_BYTES / 3 + 1];
    let entries: Vec<_> = (1..=10).map(|i| put_entry(i, "k", value.clone())).collect();
    log.blocking_append(entries).await.unwrap();

    let sent = log.limited_get_log_entries(1, 11).await.unwrap();
    let ids: Vec<_> = sent.iter().map(|e| e.log_id).collect();
    assert_eq!(ids, vec![log_id(1, 1), log_id(1, 2), log_id(1, 3)], "stops once the budget is reached");

    let small: Vec<_> = (11..=20).map(|i| put_entry(i, "k", b"v".to_vec())).collect();
    log.blocking_append(small).await.unwrap();
    assert_eq!(log.limited_get_log_entries(11, 21).await.unwrap().len(), 10, "small entries all fit");
    assert_eq!(log.limited_get_log_entries(4, 5).await.unwrap().len(), 1, "an oversized entry still goes alone");
    assert!(log.limited_get_log_entries(5, 5).await.unwrap().is_empty());
    // Applying reads whole ranges: the budget is only for replication.
    assert_eq!(log.try_get_log_entries(1..21).await.unwrap().len(), 20);
}

#[tokio::test]
async fn the_budget_is_set_by_the_node() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine).with_append_budget(1);
    let entries: Vec<_> = (1..=5).map(|i| put_entry(i, "k", vec![7u8; 1000])).collect();
    log.blocking_append(entries).await.unwrap();
    // One byte: every AppendEntries carries a single entry.
    for i in 1..=5 {
        let sent = log.limited_get_log_entries(i, 6).await.unwrap();
        assert_eq!(sent.iter().map(|e| e.log_id).collect::<Vec<_>>(), vec![log_id(1, i)]);
    }
    // One and a half entries' worth: the second entry reaches it.
    let mut log = log.with_append_budget(1500);
    assert_eq!(log.limited_get_log_entries(1, 6).await.unwrap().len(), 2);
}

/// A data dir records its on-disk format; a build refuses one it would misread.
#[tokio::test]
async fn data_dirs_carry_their_format_and_others_are_refused() {
    use raft_core::engine::{Batch, KvEngine, Tree};
    use raft_core::log_store::{FormatError, DATA_FORMAT};

    // An empty dir is marked, and the mark is accepted from then on (after entries arrive).
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    log.check_format().unwrap();
    log.blocking_append(vec![put_entry(1, "k", b"v".to_vec())]).await.unwrap();
    log.check_format().unwrap();

    // A dir marked with another format.
    let mut batch = Batch::default();
    batch.put(Tree::RaftMeta, b"format".to_vec(), bincode::serialize(&(DATA_FORMAT + 1)).unwrap());
    engine.write(batch).unwrap();
    let err = LogStore::new(engine).check_format().unwrap_err();
    assert!(matches!(err, FormatError::Other { found } if found == DATA_FORMAT + 1), "{err}");

    // A dir with state but no mark: written before marks existed.
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    log.blocking_append(vec![put_entry(1, "k", b"v".to_vec())]).await.unwrap();
    let err = log.check_format().unwrap_err();
    assert!(matches!(err, FormatError::Unmarked), "{err}");
    assert!(err.to_string().contains("move it aside"), "{err}");
}
