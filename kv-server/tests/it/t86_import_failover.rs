//! The leader dies while a follower imports a snapshot: the other survivor leads, and writes go
//! on for as long as the import lasts. Here the import is held at its failpoint for the rest of
//! the test, so a cluster that waited for it would answer no write at all.
//!
//! Two ways it used to stop: the importing member won the election and, as leader, answered no
//! write until its import ended (apply waits for the import); or it followed, and openraft's
//! core stopped taking entries once its queue of 1,024 commits for the state machine was full.

use std::time::{Duration, Instant};

use etcd_client::Client;

use crate::harness::Cluster;

/// Writes while the follower is down: with `--snapshot-count 200` the leader purges the log it
/// would need, so it comes back through a snapshot.
const BURST: usize = 600;
/// Writes after the kill, one at a time (an entry and a commit each): more than openraft's
/// default queue of commands to the state machine.
const AFTER: usize = 2_000;
/// Longest one write may take, retries included (an election comes first).
const WRITE_GUARD: Duration = Duration::from_secs(20);

/// Puts `key` through `c` until it is acknowledged. A failed or timed-out attempt has an
/// unknown outcome; putting the same value again is harmless.
async fn put_until_acknowledged(c: &mut Client, key: &str) {
    let deadline = Instant::now() + WRITE_GUARD;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), c.put(key, "after", None)).await;
        if matches!(attempt, Ok(Ok(_))) {
            return;
        }
        assert!(Instant::now() < deadline, "{key} was not acknowledged within {WRITE_GUARD:?}: {attempt:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_when_the_leader_dies_during_a_followers_import() {
    let mut cluster = Cluster::start(&["--snapshot-count", "200"]).await;
    let leader = cluster.leader().await;
    let (importing, other) = ((leader + 1) % 3, (leader + 2) % 3);
    cluster.members[importing].kill9();
    let mut c = cluster.members[leader].client().await;
    for i in 0..BURST {
        c.put(format!("burst/{i:04}"), "v", None).await.expect("put");
    }

    cluster.members[importing].restart_with_env(&[("FAILPOINTS", "snapshot-import=pause")]);
    cluster.members[importing].wait_logged("importing it").await;
    cluster.members[leader].kill9();

    // Through the survivor that leads and through the importing member, which forwards.
    // (The harness's `client` would wait for a read, which the importing member cannot serve.)
    let importing_client = Client::connect([cluster.members[importing].endpoint.as_str()], None).await;
    let mut clients = [cluster.members[other].client().await, importing_client.expect("connect")];
    for i in 0..AFTER {
        put_until_acknowledged(&mut clients[i % 2], &format!("after/{i:04}")).await;
    }

    let got = clients[0].get("after/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await;
    assert_eq!(got.expect("count").count(), AFTER as i64, "every acknowledged write is there");
    let status = clients[0].status().await.expect("status");
    assert_eq!(status.leader(), status.header().expect("header").member_id(), "the member that is not importing leads");
    let log = cluster.members[importing].log.lock().unwrap().join("\n");
    assert!(!log.contains("installed snapshot"), "the import was held throughout");
}
