//! Installing a snapshot sent by a leader, on the sled engine.

use std::io::Cursor;
use std::sync::Arc;

use kv_api::etcdserverpb::RangeRequest;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use raft_core::engine::{MemEngine, SledEngine};
use raft_core::KvStore;

use crate::common::{membership_entry, put_entry};

/// Whatever id the leader gives its snapshot, the member stores the data under its own file
/// name inside its files directory, installs it, and serves it again as its current snapshot.
#[tokio::test]
async fn a_snapshot_id_never_names_a_path() {
    let mut leader = KvStore::open(Arc::new(MemEngine::new())).unwrap();
    leader.apply(vec![membership_entry(1), put_entry(2, "a", b"1".to_vec())]).await.unwrap();
    let built = leader.build_snapshot().await.unwrap();
    let data = leader.get_current_snapshot().await.unwrap().unwrap().snapshot.into_inner();

    let dir = tempfile::tempdir().unwrap();
    let mut member = KvStore::open(Arc::new(SledEngine::open(dir.path().join("data")).unwrap())).unwrap();
    for id in ["../outside/evil.tmp", ".hidden", "a/b\\c"] {
        let mut meta = built.meta.clone();
        meta.snapshot_id = id.to_string();
        member.install_snapshot(&meta, Box::new(Cursor::new(data.clone()))).await.unwrap();
        let current = member.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.snapshot_id, id);
        assert_eq!(current.snapshot.into_inner(), data);
    }
    let got = member.range(&RangeRequest { key: b"a".to_vec(), ..Default::default() }).unwrap();
    assert_eq!(got.kvs[0].value, b"1");
    assert!(!dir.path().join("outside").exists());
    let files: Vec<_> = std::fs::read_dir(dir.path().join("data/files")).unwrap().collect();
    assert_eq!(files.len(), 1, "only the current snapshot's file is kept");
}
