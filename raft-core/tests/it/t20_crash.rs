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
async fn crash_loses_the_unflushed_applies_and_the_log_keeps_every_entry() {
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
    assert!(engine.unflushed_batches() > 0, "the last apply is unflushed");

    engine.crash();

    // Applies are marked torn until the state is flushed whole (a snapshot, a clean shutdown):
    // with no snapshot stored, the state goes back to empty.
    let sm = KvStore::open(engine.clone()).unwrap();
    let meta = sm.meta();
    assert_eq!(meta.last_applied, None, "reopens at the last whole state");
    assert_eq!(meta.revision, 1, "revision and data moved together");
    assert_eq!(get(&sm, "a"), None);
    // The log was synced on append, so all three entries are still there to re-apply.
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
/// loses it, and the entries are still there to apply again. A purge, which drops entries,
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
    log.purge(log_id(1, 1)).await.unwrap();
    assert_eq!(engine.unflushed_batches(), 0, "the purge flushed it");

    log.blocking_append([put_entry(4, "c", b"3".to_vec())]).await.unwrap();
    sm.apply([put_entry(3, "b", b"2".to_vec()), put_entry(4, "c", b"3".to_vec())]).await.unwrap();
    drop((log, sm));
    engine.crash();
    let mut log = LogStore::new(engine.clone());
    assert_eq!(log.try_get_log_entries(2..5).await.unwrap().len(), 3, "every appended entry survived");
}

/// The `k` key as stored: (value, version, mod revision).
fn stored_k(sm: &KvStore<MemEngine>) -> Option<(Vec<u8>, i64, i64)> {
    let r = sm.range(&RangeRequest { key: b"k".to_vec(), ..Default::default() }).unwrap();
    r.kvs.first().map(|kv| (kv.value.clone(), kv.version, kv.mod_revision))
}

/// Applies go to the engine op by op, so a crash can cut one anywhere. Whatever prefix of the
/// unflushed writes survives, the member reopens at its stored snapshot (the state was marked
/// torn before the first of those writes), and applying the log from there gives exactly the
/// state before the crash: a put that was half written is not counted twice.
#[tokio::test]
async fn a_crash_inside_an_apply_goes_back_to_the_snapshot_and_the_log_restores_the_rest() {
    use openraft::storage::RaftSnapshotBuilder;
    let entries = [
        membership_entry(1),
        put_entry(2, "k", b"one".to_vec()),
        put_entry(3, "k", b"two".to_vec()),
        put_entry(4, "k", b"three".to_vec()),
    ];
    let mut cuts = 0;
    for kept in 0.. {
        let engine = Arc::new(MemEngine::new());
        let mut sm = KvStore::open(engine.clone()).unwrap();
        sm.init_cluster_id(7).unwrap();
        sm.apply(entries[..2].to_vec()).await.unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        sm.apply(entries[2..].to_vec()).await.unwrap();
        let before = stored_k(&sm);
        assert_eq!(before, Some((b"three".to_vec(), 3, 4)));
        let pending = engine.unflushed_batches();
        if kept > pending {
            break;
        }
        drop(sm);
        engine.crash_keeping(kept);

        let mut sm = KvStore::open(engine.clone()).unwrap();
        assert_eq!(sm.meta().last_applied, Some(log_id(1, 2)), "kept {kept} of {pending}: back to the snapshot");
        assert_eq!(stored_k(&sm), Some((b"one".to_vec(), 1, 2)));
        assert!(!sm.meta().torn, "the restored state is whole");
        assert_eq!(sm.meta().cluster_id, 7);
        sm.apply(entries[2..].to_vec()).await.unwrap();
        assert_eq!(stored_k(&sm), before, "kept {kept} of {pending}");
        cuts += 1;
    }
    assert!(cuts > 5, "the apply was cut at every one of its writes: {cuts} cuts");
}

/// With no snapshot stored, a torn state goes back to the empty state (nothing was purged, so
/// the whole log is there); the cluster id, set once at bootstrap, stays. A clean shutdown
/// flushes the state whole, and the next start keeps it.
#[tokio::test]
async fn a_torn_state_without_a_snapshot_goes_back_to_empty_and_a_clean_flush_keeps_the_state() {
    let engine = Arc::new(MemEngine::new());
    let mut sm = KvStore::open(engine.clone()).unwrap();
    sm.init_cluster_id(7).unwrap();
    sm.apply(vec![membership_entry(1), put_entry(2, "k", b"one".to_vec())]).await.unwrap();
    drop(sm);
    engine.crash_keeping(1);
    let sm = KvStore::open(engine.clone()).unwrap();
    assert_eq!(sm.meta().last_applied, None);
    assert_eq!(stored_k(&sm), None);
    assert_eq!(sm.meta().cluster_id, 7);

    let mut sm = KvStore::open(engine.clone()).unwrap();
    sm.apply(vec![membership_entry(1), put_entry(2, "k", b"one".to_vec())]).await.unwrap();
    sm.flush_whole().unwrap();
    drop(sm);
    engine.crash();
    let sm = KvStore::open(engine.clone()).unwrap();
    assert_eq!(sm.meta().last_applied, Some(log_id(1, 2)), "flushed whole: kept as it was");
    assert_eq!(stored_k(&sm), Some((b"one".to_vec(), 1, 2)));
}

/// A purge drops only entries a stored snapshot covers, and waits for one. openraft 0.9 purges
/// the log up to a snapshot received from the leader while the state machine is still
/// installing it; had the purge gone first, a crash in between left a member whose state
/// machine ends before its log begins, which no restart recovers from.
#[tokio::test]
async fn a_purge_waits_for_a_stored_snapshot_that_covers_it() {
    use openraft::storage::RaftSnapshotBuilder;
    let engine = Arc::new(MemEngine::new());
    let mut sm = KvStore::open(engine.clone()).unwrap();
    let mut log = LogStore::new(engine.clone()).with_snapshot_position(sm.stored_snapshot());
    let entries: Vec<_> =
        std::iter::once(membership_entry(1)).chain((2..=6).map(|i| put_entry(i, "k", vec![i as u8]))).collect();
    log.blocking_append(entries.clone()).await.unwrap();
    sm.apply(entries[..4].to_vec()).await.unwrap();

    let mut purging = log.clone();
    let purge = tokio::spawn(async move { purging.purge(log_id(1, 4)).await });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!purge.is_finished(), "no snapshot covers entry 4 yet");
    assert_eq!(engine.stored_log_indexes(), (1..=6).collect::<Vec<_>>());

    sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    purge.await.unwrap().unwrap();
    assert_eq!(engine.stored_log_indexes(), vec![5, 6]);

    // A snapshot that fails to install fails the purge waiting for it (the member stops).
    let mut purging = log.clone();
    let purge = tokio::spawn(async move { purging.purge(log_id(1, 6)).await });
    let meta = openraft::SnapshotMeta { last_log_id: Some(log_id(1, 6)), last_membership: Default::default() };
    let corrupt = raft_core::snapshot_data::SnapshotData::from_bytes(b"not a snapshot".to_vec());
    assert!(sm.install_snapshot(&meta, corrupt).await.is_err());
    let refused = purge.await.unwrap().unwrap_err().to_string();
    assert!(refused.contains("no stored snapshot covers entry 6"), "{refused}");
    assert_eq!(engine.stored_log_indexes(), vec![5, 6]);
}

/// A crash after a purge recorded its position but before it dropped the entries, when the
/// position is past every stored entry (a follower far behind purges up to the snapshot it
/// received): the next start drops them, and appends go on after the purge position.
#[tokio::test]
async fn a_purge_past_the_log_cut_short_by_a_crash_is_finished_on_start() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    log.blocking_append((1..=5).map(|i| put_entry(i, "k", vec![i as u8]))).await.unwrap();
    log.purge(log_id(1, 10)).await.unwrap();
    drop(log);
    engine.crash();
    assert_eq!(engine.stored_log_indexes(), (1..=5).collect::<Vec<_>>(), "the unsynced drop is lost");

    let mut log = LogStore::new(engine.clone());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 10)));
    log.blocking_append([put_entry(11, "k", b"after".to_vec())]).await.unwrap();
    assert_eq!(engine.stored_log_indexes(), vec![11]);
}

/// A data dir whose log is purged past the end of its state machine cannot catch up from its
/// own log: it is refused at start with what to do, not left to fail on the first read.
#[tokio::test]
async fn a_log_purged_past_the_state_machine_is_refused_at_start() {
    let engine = Arc::new(MemEngine::new());
    let mut log = LogStore::new(engine.clone());
    log.blocking_append((1..=5).map(|i| put_entry(i, "k", vec![i as u8]))).await.unwrap();
    log.purge(log_id(1, 3)).await.unwrap();
    let refused = log.check_recoverable(None).await.unwrap_err().to_string();
    assert!(refused.contains("purged up to entry 3 but the state machine holds nothing"), "{refused}");
    assert!(log.check_recoverable(Some(log_id(1, 2))).await.is_err());
    log.check_recoverable(Some(log_id(1, 3))).await.unwrap();
    log.check_recoverable(Some(log_id(1, 5))).await.unwrap();
}
