//! Installing a leader's snapshot while its import is held or failed at the `snapshot-import`
//! failpoint. A binary of its own: a failpoint is process-wide, and here it cannot reach the
//! installs of the other tests.
#![cfg(not(madsim))]

use std::sync::Arc;

use kv_api::etcdserverpb::RangeRequest;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use raft_core::engine::{MemEngine, SledEngine};
use raft_core::snapshot_data::SnapshotData;
use raft_core::KvStore;

#[allow(dead_code)]
#[path = "it/common.rs"]
mod common;

use common::{membership_entry, put_entry};

fn value_of(sm: &KvStore<SledEngine>, key: &str) -> Option<Vec<u8>> {
    let got = sm.range(&RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() }).unwrap();
    got.kvs.first().map(|kv| kv.value.clone())
}

/// openraft waits for an install to return before it runs any later Raft command, votes
/// included, so an install returns once the snapshot is stored and current, and the state is
/// replaced from it after. What reads or applies in the meantime waits for the import: it sees
/// the snapshot's state, never the one before or a part. Here the import is held at its
/// failpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_returns_before_its_import_and_reads_and_applies_wait_for_it() {
    let scenario = fail::FailScenario::setup();
    let mut leader = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    leader
        .apply(vec![membership_entry(1), put_entry(2, "a", b"snapshot".to_vec()), put_entry(3, "b", b"1".to_vec())])
        .await
        .unwrap();
    let built = leader.build_snapshot().await.unwrap();
    let data = leader.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut member = KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    member.apply(vec![membership_entry(1), put_entry(2, "a", b"before".to_vec())]).await.unwrap();

    fail::cfg("snapshot-import", "pause").unwrap();
    member.install_snapshot(&built.meta, SnapshotData::from_bytes(data.clone())).await.unwrap();
    // Stored and current before the import: the log it covers may be purged.
    assert_eq!(member.stored_snapshot().borrow().last, built.meta.last_log_id);
    assert_eq!(member.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap(), data);

    let reader = {
        let member = member.clone();
        tokio::task::spawn_blocking(move || value_of(&member, "a"))
    };
    let applier = {
        let mut member = member.clone();
        // The next entry after the snapshot: a put of a key the snapshot holds at version 1.
        tokio::spawn(async move {
            member.apply(vec![put_entry(4, "b", b"2".to_vec())]).await.unwrap();
            member
        })
    };
    fail::remove("snapshot-import");
    assert_eq!(reader.await.unwrap().as_deref(), Some(&b"snapshot"[..]), "a read during the import");
    drop(applier.await.unwrap());
    let b = member.range(&RangeRequest { key: b"b".to_vec(), ..Default::default() }).unwrap();
    assert_eq!((b.kvs[0].value.as_slice(), b.kvs[0].version), (&b"2"[..], 2), "applied on the snapshot's state");
    drop(member);

    // A restart finds the snapshot whole and current.
    let member = KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    assert_eq!(value_of(&member, "a").as_deref(), Some(&b"snapshot"[..]));
    scenario.teardown();
}

/// An import that fails part way (here: panics at its failpoint) leaves a state that is part of
/// a snapshot: the store refuses reads, applies and further installs, and a restart imports the
/// snapshot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_stops_the_store_and_a_restart_imports_again() {
    let scenario = fail::FailScenario::setup();
    let mut leader = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    leader.apply(vec![membership_entry(1), put_entry(2, "a", b"snapshot".to_vec())]).await.unwrap();
    let built = leader.build_snapshot().await.unwrap();
    let data = leader.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let open = || KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    let mut member = open();
    member.apply(vec![membership_entry(1), put_entry(2, "a", b"before".to_vec())]).await.unwrap();

    fail::cfg("snapshot-import", "panic").unwrap();
    // Stored and current before the import fails.
    member.install_snapshot(&built.meta, SnapshotData::from_bytes(data.clone())).await.unwrap();
    let refused = member.range(&RangeRequest { key: b"a".to_vec(), ..Default::default() }).expect_err("a read");
    assert!(refused.to_string().contains("failed write"), "{refused}");
    let applied = member.apply(vec![put_entry(3, "b", b"1".to_vec())]).await.expect_err("an apply");
    assert!(applied.to_string().contains("failed write"), "{applied}");
    let again = member.install_snapshot(&built.meta, SnapshotData::from_bytes(data)).await.expect_err("an install");
    assert!(again.to_string().contains("failed write"), "{again}");
    fail::remove("snapshot-import");
    drop(member);

    let member = open();
    assert_eq!(value_of(&member, "a").as_deref(), Some(&b"snapshot"[..]), "imported again at the restart");
    scenario.teardown();
}
