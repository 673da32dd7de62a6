//! Helpers shared by the raft-core tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::PutRequest;
use openraft::{EntryPayload, Membership};
use raft_core::engine::Engine;
use raft_core::request::RequestBatch;
use raft_core::typ::{Entry, LogId, PeerNode};
use raft_core::{Node, NodeConfig, WriteRequest};

pub fn log_id(term: u64, index: u64) -> LogId {
    raft_core::typ::log_id(term, 1, index)
}

pub fn put_entry(index: u64, key: &str, value: Vec<u8>) -> Entry {
    let req = WriteRequest::Put(PutRequest { key: key.into(), value, ..Default::default() });
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(RequestBatch::new(&[req])) }
}

/// An entry of `requests`, at `index` of term 1.
pub fn entry_of(index: u64, requests: &[WriteRequest]) -> Entry {
    Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(RequestBatch::new(requests)) }
}

pub fn membership_entry(index: u64) -> Entry {
    let m = Membership::new_with_defaults(vec![[1u64].into_iter().collect()], []);
    Entry { log_id: log_id(1, index), payload: EntryPayload::Membership(m) }
}

/// A one-member node on `engine`, started and bootstrapped, once it leads.
pub async fn leader<E: Engine>(engine: Arc<E>) -> Node<E> {
    leader_with(engine, NodeConfig::default()).await
}

/// [`leader`] with `cfg` (its id and timing are set here).
pub async fn leader_with<E: Engine>(engine: Arc<E>, cfg: NodeConfig) -> Node<E> {
    let cfg = NodeConfig {
        id: 1,
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(150),
        ..cfg
    };
    let node = Node::start(cfg, engine).await.expect("start");
    node.bootstrap(BTreeMap::from([(1, PeerNode { peer_urls: vec!["http://127.0.0.1:1".into()] })]))
        .await
        .expect("bootstrap");
    node.raft()
        .wait(Some(Duration::from_secs(30)))
        .state(openraft::ServerState::Leader, "one member leads")
        .await
        .expect("leader");
    node
}

pub fn put(key: &str, value: &str) -> WriteRequest {
    WriteRequest::Put(PutRequest { key: key.into(), value: value.into(), ..Default::default() })
}
