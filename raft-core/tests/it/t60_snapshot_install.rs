//! Installing a snapshot sent by a leader, on the sled engine.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use kv_api::etcdserverpb::RangeRequest;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use openraft_legacy::network_v1::SnapshotReceiverFactory;
use raft_core::engine::{MemEngine, SledEngine};
use raft_core::snapshot_data::SnapshotData;
use raft_core::KvStore;

use crate::common::{entry_of, membership_entry, put_entry};

/// A snapshot from the leader is stored under a file name of the member's own, installed, and
/// served again as the current snapshot, also when the same snapshot comes again.
#[tokio::test]
async fn a_snapshot_installed_again_keeps_the_current_file_whole() {
    let mut leader = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    leader.apply(vec![membership_entry(1), put_entry(2, "a", b"1".to_vec())]).await.unwrap();
    let built = leader.build_snapshot().await.unwrap();
    let data = leader.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut member = KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    // The same snapshot again (a leader that sends it once more) never writes over the file the
    // current snapshot is in.
    for _ in 0..3 {
        member.install_snapshot(&built.meta, SnapshotData::from_bytes(data.clone())).await.unwrap();
        let mut current = member.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.read_all().unwrap(), data);
    }
    let got = member.range(&RangeRequest { key: b"a".to_vec(), ..Default::default() }).unwrap();
    assert_eq!(got.kvs[0].value, b"1");
    assert!(!dir.path().join("outside").exists());
    let files: Vec<_> = std::fs::read_dir(dir.path().join("data/files")).unwrap().collect();
    assert_eq!(files.len(), 1, "only the current snapshot's file is kept");
}

fn value_of(sm: &KvStore<SledEngine>, key: &str) -> Option<Vec<u8>> {
    let got = sm.range(&RangeRequest { key: key.as_bytes().to_vec(), ..Default::default() }).unwrap();
    got.kvs.first().map(|kv| kv.value.clone())
}

/// A snapshot arrives in chunks, in any order, into a file of the member's own: installed, it
/// is the member's state. A transfer cut off leaves no file, and an install that fails part
/// way (data that ends early) leaves the member, once restarted, on its previous
/// state, from its previous snapshot.
#[tokio::test]
async fn snapshots_are_received_into_files_and_a_failed_install_keeps_the_previous_state() {
    let mut leader = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    let entries: Vec<_> = std::iter::once(membership_entry(1))
        .chain((2..=40).map(|i| put_entry(i, &format!("k{i:02}"), vec![i as u8; 1000])))
        .collect();
    leader.apply(entries).await.unwrap();
    let built = leader.build_snapshot().await.unwrap();
    let data = leader.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("data/files");
    let received_files = || {
        std::fs::read_dir(&files)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("received-"))
            .count()
    };
    let open = || KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    let mut member = open();
    member.apply(vec![membership_entry(1), put_entry(2, "previous", b"state".to_vec())]).await.unwrap();
    member.build_snapshot().await.unwrap();

    // Cut off: half the chunks arrive, then the transfer is abandoned.
    let mut cut = member.begin_receiving_snapshot().await.unwrap();
    cut.write_all(&data[..data.len() / 2]).unwrap();
    assert_eq!(received_files(), 1);
    drop(cut);
    assert_eq!(received_files(), 0, "an abandoned transfer leaves no file");

    // Cut short after most of its pairs: the install fails part way through the import.
    let mut bad = member.begin_receiving_snapshot().await.unwrap();
    bad.write_all(&data[..data.len() - 100]).unwrap();
    // The receiver shuts the data down after its last chunk: that syncs and checks it.
    let cut_short = tokio::io::AsyncWriteExt::shutdown(&mut bad).await.expect_err("data cut short");
    assert!(cut_short.to_string().contains("corrupt snapshot"), "{cut_short}");
    assert!(member.install_snapshot(&built.meta, bad).await.is_err());
    member.flush_whole().unwrap();
    drop(member);
    let member = open();
    assert_eq!(value_of(&member, "previous").as_deref(), Some(&b"state"[..]), "back on the previous snapshot");
    assert_eq!(value_of(&member, "k10"), None);
    drop(member);

    // Whole, the chunks written out of order: installed.
    let mut member = open();
    let mut good = member.begin_receiving_snapshot().await.unwrap();
    let half = data.len() / 2;
    good.seek(SeekFrom::Start(half as u64)).unwrap();
    good.write_all(&data[half..]).unwrap();
    good.seek(SeekFrom::Start(0)).unwrap();
    good.write_all(&data[..half]).unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut good).await.unwrap();
    member.install_snapshot(&built.meta, good).await.unwrap();
    assert_eq!(received_files(), 0, "the received file became the snapshot's");
    assert_eq!(value_of(&member, "k10"), Some(vec![10; 1000]));
    assert_eq!(value_of(&member, "previous"), None);
    let mut current = member.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.snapshot.read_all().unwrap(), data);
}

/// Leases travel in snapshots, and the index of keys by lease is rebuilt from the versions on
/// install and on reopening: a revoke on the member deletes what it deleted on the leader.
#[tokio::test]
async fn leases_and_their_keys_travel_in_snapshots() {
    use kv_api::etcdserverpb::PutRequest;
    use raft_core::WriteRequest;
    let put = |key: &str, lease: i64| {
        WriteRequest::Put(PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() })
    };
    let mut leader = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    let grants = [WriteRequest::LeaseGrant { id: 10, ttl: 30 }, WriteRequest::LeaseGrant { id: 11, ttl: 5 }];
    let checkpoint = WriteRequest::LeaseCheckpoint { elapsed_ms: 1_500, remaining: vec![(10, 12_000)] };
    leader
        .apply(vec![
            membership_entry(1),
            entry_of(2, &grants),
            entry_of(3, &[put("a", 10), put("b", 10), put("c", 11)]),
            entry_of(4, &[checkpoint, put("b", 11)]),
        ])
        .await
        .unwrap();
    let built = leader.build_snapshot().await.unwrap();
    let data = leader.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let open = || KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    let mut member = open();
    member.install_snapshot(&built.meta, SnapshotData::from_bytes(data)).await.unwrap();
    let leases = |sm: &KvStore<SledEngine>| {
        let mut all = Vec::new();
        for lease in sm.leases().unwrap() {
            all.push((lease.id, lease.ttl, lease.remaining_ms, sm.lease(lease.id).unwrap().unwrap().1));
        }
        all
    };
    // Lease 11 was not renewed: the checkpoint's 1.5 s came off its 5 s.
    let expected = vec![(10, 30, 12_000, vec![b"a".to_vec()]), (11, 5, 3_500, vec![b"b".to_vec(), b"c".to_vec()])];
    assert_eq!(leases(&member), expected, "installed");
    drop(member);
    let mut member = open();
    assert_eq!(leases(&member), expected, "reopened");
    member.apply(vec![entry_of(5, &[WriteRequest::LeaseRevoke { id: 11 }])]).await.unwrap();
    assert_eq!(
        (value_of(&member, "a"), value_of(&member, "b"), value_of(&member, "c")),
        (Some(b"v".to_vec()), None, None)
    );
    assert!(member.lease(11).unwrap().is_none());
}
