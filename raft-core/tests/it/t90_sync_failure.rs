//! A snapshot whose file fails to sync part way (the sync a helper thread runs while the file
//! is written) fails that build: it does not become the stored snapshot, so the log store
//! purges nothing behind it. The failure is injected at the engine's sync failpoint.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use raft_core::engine::{RaftEngine, SledEngine};
use raft_core::KvStore;

use crate::common::{membership_entry, put_entry};

#[tokio::test]
async fn a_failed_sync_fails_the_snapshot_build_and_nothing_is_purged() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(SledEngine::open(dir.path()).unwrap());
    let mut sm = KvStore::open(engine.clone()).unwrap();
    sm.apply(vec![membership_entry(1)]).await.unwrap();
    // Over the 4 MiB after which the file is synced in the background.
    let entries: Vec<_> = (2..=40).map(|i| put_entry(i, &format!("key{i}"), vec![i as u8; 200 << 10])).collect();
    sm.apply(entries).await.unwrap();
    engine.log_append((1..=40).map(|i| (i, vec![i as u8])).collect()).unwrap();

    fail::cfg("sled-engine-sync-data", "return").unwrap();
    let err = sm.build_snapshot().await.expect_err("a build whose file failed to sync");
    assert!(err.to_string().contains("injected sync failure"), "{err}");
    assert_eq!(sm.stored_snapshot().borrow().last, None, "the failed build became the stored snapshot");
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    let files: Vec<_> = std::fs::read_dir(dir.path().join("files")).unwrap().collect();
    assert!(files.is_empty(), "the failed build left {files:?}");
    assert_eq!(engine.log_read(1, 41, usize::MAX).unwrap().len(), 40, "the log is whole");

    // Healed, the next build succeeds and becomes the stored snapshot.
    fail::remove("sled-engine-sync-data");
    let built = sm.build_snapshot().await.unwrap();
    assert_eq!(sm.stored_snapshot().borrow().last, built.meta.last_log_id);
    scenario.teardown();
}
