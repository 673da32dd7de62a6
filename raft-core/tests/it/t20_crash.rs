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

/// A purge records its position durably and drops the entries. Dropping them is not durable on
/// its own, so a crash can bring purged entries back, but only below the durable purge position:
/// the log openraft sees has no gap, and the next purge drops them.
#[tokio::test]
async fn purged_entries_never_reappear_in_the_log_after_a_crash() {
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
    assert_eq!(engine.stored_log_indexes(), (501..=600).collect::<Vec<_>>(), "dropped from the log");

    drop(log);
    engine.crash();
    assert_eq!(engine.stored_log_indexes().len(), 600, "the unsynced drop is lost");
    let mut log = LogStore::new(engine.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 500)), "the purge position was durable");
    assert_eq!(state.last_log_id, Some(log_id(1, 600)));
    assert_eq!(log.try_get_log_entries(..).await.unwrap().first().map(|e| e.log_id.index), Some(501));
    assert_eq!(log.try_get_log_entries(..=500).await.unwrap().len(), 0);

    log.purge(log_id(1, 550)).await.unwrap();
    assert_eq!(engine.stored_log_indexes(), (551..=600).collect::<Vec<_>>());

    // A log purged entirely reports its purge position as its last entry, and appends go on
    // after it.
    log.purge(log_id(1, 600)).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 600)));
    log.blocking_append([put_entry(601, "k", b"after".to_vec())]).await.unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 601)));
}

/// A log append syncs the log alone: what apply wrote to the trees stays unflushed, a crash
/// loses it, and the entries are still there to apply again. The purge, which drops entries,
/// flushes the trees first.
#[tokio::test]
async fn a_log_append_leaves_applied_state_unflushed_and_a_purge_flushes_it() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    let mut sm = KvStore::open(engine.clone()).unwrap();
    let entries = vec![membership_entry(1), put_entry(2, "a", b"1".to_vec())];
    log.blocking_append(entries.clone()).await.unwrap();
    sm.apply(entries.clone()).await.unwrap();
    log.blocking_append([put_entry(3, "b", b"2".to_vec())]).await.unwrap();
    assert!(engine.unflushed_batches() > 0, "the append did not flush what apply wrote");

    drop((log, sm));
    engine.crash();
    let sm = KvStore::open(engine.clone()).unwrap();
    assert_eq!(sm.meta().last_applied, None, "the applied state was not durable");
    let mut log = LogStore::new(engine.clone());
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3, "every appended entry was");

    let mut sm = KvStore::open(engine.clone()).unwrap();
    sm.apply(log.try_get_log_entries(1..4).await.unwrap()).await.unwrap();
    log.purge(log_id(1, 3)).await.unwrap();
    drop((log, sm));
    engine.crash();
    let sm = KvStore::open(engine.clone()).unwrap();
    assert_eq!(sm.meta().last_applied, Some(log_id(1, 3)), "the purge made the applied state durable");
    assert_eq!(get(&sm, "b"), Some(b"2".to_vec()));
}
