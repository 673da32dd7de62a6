//! Writes sent to a follower move to a new leader as soon as one is elected, even while the
//! follower's Forward requests to the old leader, which stopped answering (paused, as by a
//! stalled disk or SIGSTOP), still hang.
//!
//! Before, a follower had one pool of Forward slots for all leaders: requests hung on a silent
//! leader held them until the request timeout, and writes for the new leader waited behind
//! them. (A partition does not show it: in the simulation, as often on a real network, calls
//! across a cut link fail at once.) Times here are madsim's virtual clock (deterministic per seed), not a measurement.
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test -p simulation --release
//! --test failover` (part of `cargo xtask sim`)
#![cfg(madsim)]

use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::PutRequest;
use madsim::runtime::{Handle, Runtime};
use madsim::time::{sleep, Instant};
use simulation::cluster::{Options, SimCluster};

/// Seeds run (each a different election order and timing).
const SEEDS: std::ops::Range<u64> = 1..9;

/// How long after the new leader is seen a write through the follower may take. The sim's
/// request timeout is 2 s, which is what a write waited behind hung requests before.
const PROMPT: Duration = Duration::from_millis(500);

async fn put(endpoint: String, key: String) -> Result<(), tonic::Status> {
    let mut kv = KvClient::connect(endpoint).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    kv.put(PutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() }).await?;
    Ok(())
}

/// The member that leads in the highest term, once it is not `old`.
async fn new_leader(c: &SimCluster, old: Option<usize>) -> usize {
    loop {
        if let Some(l) = c.leader().await.filter(|l| Some(*l) != old) {
            return l;
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn follower_writes_reach_the_new_leader() {
    let c = SimCluster::start(&Options::default());
    let old = new_leader(&c, None).await;
    let followers: Vec<usize> = (0..c.len()).filter(|&i| i != old).collect();
    let client = Handle::current().create_node().name("client").ip("10.0.1.1".parse().unwrap()).build();
    let ep = c.endpoints[followers[0]].clone();
    client.spawn(async move { put(ep, "warm".into()).await }).await.unwrap().expect("a write before the partition");

    c.pause(old);
    // Writes to both followers in waves, so each sends them in separate Forward requests (more
    // than it keeps in flight) to the old leader, which does not answer. Their outcome is
    // unknown.
    let endpoints: Vec<String> = followers.iter().map(|&f| c.endpoints[f].clone()).collect();
    let stuck = client.spawn(async move {
        let mut waves = Vec::new();
        for wave in 0..8 {
            for i in 0..4 {
                for ep in &endpoints {
                    waves.push(madsim::task::spawn(put(ep.clone(), format!("stuck-{wave}-{i}"))));
                }
            }
            sleep(Duration::from_millis(5)).await;
        }
        for w in waves {
            let _ = w.await;
        }
    });

    let leader = new_leader(&c, Some(old)).await;
    // The member that follows the new leader had its requests to the old one hang.
    let follower = *followers.iter().find(|&&f| f != leader).expect("two followers");
    let seen = Instant::now();
    let ep = c.endpoints[follower].clone();
    let outcome = client.spawn(async move { put(ep, "after".into()).await }).await.unwrap();
    let took = seen.elapsed();
    assert!(outcome.is_ok(), "a write through the follower after the new leader was elected failed: {outcome:?}");
    assert!(took < PROMPT, "a write through the follower took {took:?} after the new leader was elected");
    stuck.await.unwrap();
    c.resume(old);
}

#[test]
fn follower_writes_move_to_the_new_leader_while_old_requests_hang() {
    for seed in SEEDS {
        println!("seed {seed}");
        Runtime::with_seed_and_config(seed, madsim::Config::default()).block_on(follower_writes_reach_the_new_leader());
    }
}
