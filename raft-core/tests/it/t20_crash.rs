//! The in-memory engine's crash drops exactly what was not flushed, and the stores reopen at
//! their last durable state; acknowledged writes survive because the log is flushed before
//! the acknowledgement.

use std::sync::Arc;

use kv_api::etcdserverpb::RangeRequest;
use kv_api::Consistency;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::RaftLogReader;
use raft_core::engine::MemEngine;
use raft_core::log_store::LogStore;
use raft_core::KvStore;

use crate::common::{leader, log_id, membership_entry, put, put_entry};

fn get(sm: &KvStore<MemEngine>, key: &str) -> Option<Vec<u8>> {
    let r = sm.range(&RangeRequest { key: key.into(), ..Default::default() }).unwrap();
    r.kvs.first().map(|kv| kv.value.clone())
}

#[tokio::test]
async fn crash_loses_exactly_the_writes_after_the_last_flush() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    let mut sm = KvStore::open(engine.clone()).unwrap();
    let entries = vec![membership_entry(1), put_entry(2, "a", b"1".to_vec()), put_entry(3, "b", b"2".to_vec())];
    log.blocking_append(entries.clone()).await.unwrap();
    sm.apply(entries[..2].to_vec()).await.unwrap();
    engine.flush_for_test();
    sm.apply(entries[2..].to_vec()).await.unwrap();
    assert_eq!(sm.meta().last_applied, Some(log_id(1, 3)));
    assert_eq!(get(&sm, "b"), Some(b"2".to_vec()));
    assert_eq!(engine.unflushed_batches(), 1, "exactly the last apply is unflushed");

    engine.crash();

    let sm = KvStore::open(engine.clone()).unwrap();
    let meta = sm.meta();
    assert_eq!(meta.last_applied, Some(log_id(1, 2)), "reopens at the last flushed apply");
    assert_eq!(meta.revision, 2, "revision and data moved together");
    assert_eq!(get(&sm, "a"), Some(b"1".to_vec()));
    assert_eq!(get(&sm, "b"), None, "the unflushed apply is gone");
    // The log was flushed on append, so all three entries are still there to re-apply.
    let mut log = LogStore::new(engine.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 3)));
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash_and_restart() {
    let engine = Arc::new(MemEngine::new());
    let node = leader(engine.clone()).await;
    let mut last = 0;
    for i in 0..20 {
        let resp = node.write(put(&format!("k{i:02}"), &format!("v{i}"))).await.unwrap();
        if let raft_core::WriteResponse::Put(p) = resp {
            last = p.header.unwrap().revision;
        }
    }
    // Stop Raft without the clean shutdown's final flush, then lose whatever was unflushed.
    node.raft().shutdown().await.unwrap();
    drop(node);
    engine.crash();

    let node = leader(engine.clone()).await;
    node.read_barrier(raft_core::ReadRequirement::level(Consistency::Linearizable)).await.unwrap();
    let all = node.store().range(&RangeRequest { key: b"k".to_vec(), range_end: b"l".to_vec(), ..Default::default() });
    let all = all.unwrap();
    assert_eq!(all.count, 20);
    assert_eq!(all.kvs[19].value, b"v19");
    assert_eq!(all.header.unwrap().revision, last, "revisions continue where they were");
}

/// Stored log entries, whatever openraft is told (purged ones may still be stored).
fn stored_indexes(engine: &MemEngine) -> Vec<u64> {
    use raft_core::engine::{Engine, Tree};
    let all = engine.scan(Tree::RaftLog, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, false);
    all.map(|item| u64::from_be_bytes(item.unwrap().0.try_into().unwrap())).collect()
}

/// Lets the background deletion run to the end (it yields between batches).
async fn let_reclaim_run() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// A purge hides the purged entries at once and deletes them in the background. Deletions are
/// never flushed on their own, so a crash can bring purged entries back, but only below the
/// durable purge position: the log openraft sees has no gap, and the next purge removes them.
#[tokio::test]
async fn purged_entries_go_in_the_background_and_a_crash_leaves_no_gap() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    let entries: Vec<_> = (1..=600).map(|i| put_entry(i, "k", vec![i as u8])).collect();
    log.blocking_append(entries).await.unwrap();

    log.purge(log_id(1, 500)).await.unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 500)));
    assert_eq!(state.last_log_id, Some(log_id(1, 600)));
    let seen = log.try_get_log_entries(1..=600).await.unwrap();
    assert_eq!(seen.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (501..=600).collect::<Vec<_>>());
    let_reclaim_run().await;
    assert_eq!(stored_indexes(&engine), (501..=600).collect::<Vec<_>>(), "deleted in the background");

    drop(log);
    engine.crash();
    assert_eq!(stored_indexes(&engine).len(), 600, "the unflushed deletions are lost");
    let mut log = LogStore::new(engine.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 500)), "the purge position was durable");
    assert_eq!(state.last_log_id, Some(log_id(1, 600)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap().first().map(|e| e.log_id.index), Some(501));
    assert_eq!(log.try_get_log_entries(..=500).await.unwrap().len(), 0);

    log.purge(log_id(1, 550)).await.unwrap();
    let_reclaim_run().await;
    assert_eq!(stored_indexes(&engine), (551..=600).collect::<Vec<_>>());

    // A log purged entirely reports its purge position as its last entry.
    log.purge(log_id(1, 600)).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 600)));
}
