//! The apply event seam: a subscriber sees every change a random workload applies, once, in
//! revision order, with the key's previous version where it had one, so that replaying the
//! changes from the state at subscription gives exactly the store's state.

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use kv_api::etcdserverpb::request_op::Request;
use kv_api::etcdserverpb::{Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use openraft::EntryPayload;
use raft_core::engine::MemEngine;
use raft_core::mvcc::keys::Record;
use raft_core::request::RequestBatch;
use raft_core::state_machine::events::Applied;
use raft_core::typ::Entry;
use raft_core::{KvStore, WriteRequest};

use crate::common::{log_id, membership_entry};

const KEYS: [&str; 5] = ["a", "ab", "b", "c", "cd"];

/// A small deterministic generator (the test replays from its seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn key(&mut self) -> Vec<u8> {
        KEYS[self.below(KEYS.len() as u64) as usize].as_bytes().to_vec()
    }

    fn request(&mut self) -> WriteRequest {
        let put =
            |key: Vec<u8>, rng: &mut Rng| PutRequest { key, value: vec![rng.below(256) as u8], ..Default::default() };
        match self.below(10) {
            0..=4 => WriteRequest::Put(put(self.key(), self)),
            5 => WriteRequest::DeleteRange(DeleteRangeRequest { key: self.key(), ..Default::default() }),
            6 => {
                // A prefix delete: every key starting with the chosen one.
                let key = self.key();
                let mut end = key.clone();
                *end.last_mut().unwrap() += 1;
                WriteRequest::DeleteRange(DeleteRangeRequest { key, range_end: end, ..Default::default() })
            }
            _ => {
                let key = self.key();
                let compare = Compare {
                    key: key.clone(),
                    target: CompareTarget::Version as i32,
                    result: CompareResult::Greater as i32,
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                };
                let success = vec![
                    RequestOp { request: Some(Request::RequestPut(put(key.clone(), self))) },
                    RequestOp { request: Some(Request::RequestPut(put(self.key(), self))) },
                ];
                let delete = DeleteRangeRequest { key, ..Default::default() };
                let failure = vec![RequestOp { request: Some(Request::RequestDeleteRange(delete)) }];
                WriteRequest::Txn(TxnRequest { compare: vec![compare], success, failure })
            }
        }
    }
}

/// The live keys of `store`, as (key, record fields).
fn state(store: &KvStore<MemEngine>) -> BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> {
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let kvs = store.range(&all).unwrap().kvs;
    kvs.into_iter().map(|kv| (kv.key, (kv.value, kv.create_revision, kv.mod_revision, kv.version))).collect()
}

fn fields(r: &Record) -> (Vec<u8>, i64, i64, i64) {
    (r.value.clone(), r.create_revision, r.mod_revision, r.version)
}

#[tokio::test]
async fn a_subscriber_sees_every_change_once_in_order_with_its_previous_version() {
    for seed in 0..20u64 {
        let mut store = KvStore::open(Arc::new(MemEngine::new())).unwrap();
        store.apply(vec![membership_entry(1)]).await.unwrap();
        let mut rng = Rng(seed);
        // Some history before the subscription, which it must not see.
        let mut index = 1;
        let mut entry = |rng: &mut Rng| {
            index += 1;
            let requests: Vec<WriteRequest> = (0..1 + rng.below(3)).map(|_| rng.request()).collect();
            Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(RequestBatch::new(&requests)) }
        };
        for _ in 0..10 {
            store.apply(vec![entry(&mut rng)]).await.unwrap();
        }
        let (mut rx, from) = store.subscribe();
        let mut model = state(&store);
        for _ in 0..200 {
            let entries: Vec<Entry> = (0..1 + rng.below(3)).map(|_| entry(&mut rng)).collect();
            store.apply(entries).await.unwrap();
        }
        let (mut last, mut seen) = ((from, i64::MAX), 0);
        while let Ok(applied) = rx.try_recv() {
            let Applied::Changes { revision, changes, .. } = &*applied else {
                panic!("seed {seed}: an apply that began after the subscription published {applied:?}");
            };
            for change in changes {
                let at = (change.version.mod_revision, change.version.sub);
                assert!(at.0 > last.0 || (at.0 == last.0 && at.1 > last.1), "seed {seed}: {at:?} after {last:?}");
                assert!(at.0 <= *revision, "seed {seed}: a change past its publication's revision");
                last = at;
                let prev = model.get(&change.key).cloned();
                assert_eq!(change.prev.as_ref().map(fields), prev, "seed {seed}: previous version of {:?}", change.key);
                if change.is_delete() {
                    assert!(prev.is_some(), "seed {seed}: a delete of a key that was not live");
                    model.remove(&change.key);
                } else {
                    let version = prev.as_ref().map_or(1, |p| p.3 + 1);
                    assert_eq!(change.version.version, version, "seed {seed}");
                    model.insert(change.key.clone(), fields(&change.version));
                }
                seen += 1;
            }
        }
        assert!(seen > 100, "seed {seed}: only {seen} changes");
        assert_eq!(model, state(&store), "seed {seed}: the changes replayed do not give the store's state");
        assert_eq!(last.0, store.meta().revision, "seed {seed}: the last change is the last revision");
    }
}
