//! A member that was down while the others took snapshots and purged their logs catches up by
//! installing a snapshot, and then answers reads at past revisions exactly like the others:
//! the snapshot carries every version since the compaction, not just the latest values.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::harness::{Cluster, CALM};

/// Everything a read at `rev` returns, or its error text.
async fn all_at(c: &mut Client, rev: i64) -> Result<Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>, String> {
    let opts = GetOptions::new().with_all_keys().with_revision(rev).with_serializable();
    match c.get("", Some(opts)).await {
        Ok(r) => Ok(r
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version()))
            .collect()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_purged_log_catches_up_by_snapshot() {
    let mut flags = CALM.to_vec();
    flags.extend(["--snapshot-count", "50"]);
    let mut cluster = Cluster::start(&flags).await;
    let leader = cluster.leader().await;
    let lagging = (leader + 1) % 3;
    cluster.members[lagging].terminate();

    // One write at a time, so each is its own Raft entry: several snapshots and purges happen.
    let mut c = cluster.members[leader].client().await;
    let mut compact_at = 0;
    for i in 0..400 {
        let key = format!("k{:02}", i % 20);
        if i % 7 == 6 {
            c.delete(key, None).await.unwrap();
        } else {
            c.put(key, format!("v{i}"), None).await.unwrap();
        }
        if i == 150 {
            compact_at = c.get("x", None).await.unwrap().header().unwrap().revision();
            c.compact(compact_at, None).await.unwrap();
        }
    }
    let current = c.get("x", None).await.unwrap().header().unwrap().revision();

    cluster.members[lagging].restart();
    cluster.members[lagging].wait_logged("installed snapshot").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut back = cluster.members[lagging].client().await;
    loop {
        let r = back.get("x", Some(GetOptions::new().with_serializable())).await.unwrap();
        if r.header().unwrap().revision() >= current {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted member never reached revision {current}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut clients = Vec::new();
    for m in &cluster.members {
        clients.push(m.client().await);
    }
    let mut compared = 0;
    for rev in (compact_at - 3..=current).step_by(7).chain([compact_at, current]) {
        let mut answers = Vec::new();
        for c in clients.iter_mut() {
            answers.push(all_at(c, rev).await);
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "members disagree at revision {rev}: {answers:?}");
        if rev < compact_at {
            assert!(answers[0].as_ref().unwrap_err().contains("compacted"), "revision {rev} is compacted");
        } else {
            assert!(answers[0].is_ok(), "revision {rev}: {answers:?}");
        }
        compared += 1;
    }
    println!("compared {compared} revisions between {compact_at} and {current} on all three members");
}
