//! A snapshot built from the stored one, and the key index rebuilt from it at start, on the
//! sled engine: both must give exactly the state that reading every version gives, and a
//! stored snapshot that cannot be read must only cost the shortcut.

use raft_core::snapshot_data::SnapshotData;
use std::sync::Arc;

use kv_api::etcdserverpb::RangeRequest;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use raft_core::engine::{MemEngine, SledEngine};
use raft_core::KvStore;

use crate::common::{membership_entry, put_entry};

/// Every key's value at every revision from 1 to the current one, as (revision, key, value).
fn history<E: raft_core::engine::Engine>(sm: &KvStore<E>) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for revision in 1..=sm.meta().revision {
        let req = RangeRequest { key: vec![0], range_end: vec![0], revision, ..Default::default() };
        for kv in sm.range(&req).unwrap().kvs {
            out.push((revision, kv.key, kv.value));
        }
    }
    out
}

fn snapshot_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("files")).unwrap().map(|e| e.unwrap().path()).collect()
}

#[tokio::test]
async fn snapshots_and_restarts_from_the_stored_snapshot_keep_every_revision() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let open = || KvStore::open(Arc::new(SledEngine::open(&data).unwrap())).unwrap();
    let mut sm = open();
    let mut index = 1;
    let mut apply = |sm: &mut KvStore<SledEngine>, puts: &[(&str, &str)]| {
        let entries: Vec<_> = puts
            .iter()
            .map(|(k, v)| {
                index += 1;
                put_entry(index, k, v.as_bytes().to_vec())
            })
            .collect();
        futures::executor::block_on(sm.apply(entries)).unwrap();
    };
    sm.apply(vec![membership_entry(1)]).await.unwrap();
    apply(&mut sm, &[("a", "1"), ("b", "1"), ("a", "2")]);
    sm.build_snapshot().await.unwrap();
    // The second snapshot starts from the first: old versions from its file, new from sled.
    apply(&mut sm, &[("b", "2"), ("c", "1"), ("a", "3")]);
    let second = sm.build_snapshot().await.unwrap();
    let expected = history(&sm);
    assert_eq!(expected.iter().filter(|(r, _, _)| *r == sm.meta().revision).count(), 3);

    // Installed elsewhere, it holds every revision.
    let second_data = sm.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();
    let mut other = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    other.install_snapshot(&second.meta, SnapshotData::from_bytes(second_data)).await.unwrap();
    assert_eq!(history(&other), expected);
    // The installed snapshot is the base of that member's next build, which holds them too.
    let rebuilt = other.build_snapshot().await.unwrap();
    let rebuilt_data = other.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();
    let mut third = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    third.install_snapshot(&rebuilt.meta, SnapshotData::from_bytes(rebuilt_data)).await.unwrap();
    assert_eq!(history(&third), expected);

    // A clean restart with versions past the snapshot: the index comes from its file and sled.
    apply(&mut sm, &[("d", "1"), ("a", "4")]);
    let expected = history(&sm);
    sm.flush_whole().unwrap();
    drop(sm);
    let sm = open();
    assert_eq!(history(&sm), expected, "rebuilt from the stored snapshot and the newer versions");

    // An unreadable stored snapshot: the start and the next build read every version instead.
    let files = snapshot_files(&data);
    assert_eq!(files.len(), 1);
    sm.flush_whole().unwrap();
    drop(sm);
    std::fs::write(&files[0], b"not a snapshot").unwrap();
    let mut sm = open();
    assert_eq!(history(&sm), expected, "rebuilt from sled alone");
    let third = sm.build_snapshot().await.unwrap();
    let third_data = sm.get_current_snapshot().await.unwrap().unwrap().snapshot.read_all().unwrap();
    let mut other = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    other.install_snapshot(&third.meta, SnapshotData::from_bytes(third_data)).await.unwrap();
    assert_eq!(history(&other), expected);
}
