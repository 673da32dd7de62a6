//! Concurrent linearizable reads share leadership confirmations: one quorum round serves every
//! read that was waiting when it started. With sharing off, each read runs its own round.

use std::sync::Arc;

use kv_api::Consistency;
use raft_core::engine::MemEngine;
use raft_core::NodeConfig;

use crate::common::{leader_with, put};

async fn rounds_for_concurrent_reads(share: bool, reads: usize) -> u64 {
    let node =
        leader_with(Arc::new(MemEngine::new()), NodeConfig { share_read_index: share, ..NodeConfig::default() }).await;
    node.write(put("k", "v")).await.unwrap();
    let before = node.read_index_rounds();
    let tasks: Vec<_> = (0..reads)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move {
                node.read_barrier(raft_core::ReadRequirement::level(Consistency::Linearizable)).await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Consistency::Linearizable);
    }
    let rounds = node.read_index_rounds() - before;
    node.shutdown().await.unwrap();
    rounds
}

#[tokio::test]
async fn concurrent_linearizable_reads_share_quorum_rounds() {
    let shared = rounds_for_concurrent_reads(true, 64).await;
    println!("64 concurrent linearizable reads: {shared} leadership confirmations");
    assert!(shared >= 1 && shared * 8 <= 64, "{shared} rounds for 64 reads");
    let alone = rounds_for_concurrent_reads(false, 64).await;
    assert_eq!(alone, 64, "without sharing every read confirms on its own");
}
