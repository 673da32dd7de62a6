//! A member that comes back after a burst of writes catches up calmly: it was down while the
//! leader purged its log, so it needs a snapshot of tens of MB, and it installs it without
//! starting an election (the term and the leader stay the same) and then holds every key.
//! Default timing flags: a transfer takes many election timeouts.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::harness::Cluster;

const KEYS: usize = 4_000;
const VALUE_BYTES: usize = 8 << 10;
const WRITERS: usize = 8;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.resize(VALUE_BYTES, b'a' + (i % 26) as u8);
    v
}

/// (term, leader) as each running member reports them.
async fn terms(cluster: &Cluster) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for m in cluster.members.iter().filter(|m| m.is_running()) {
        let mut c = Client::connect([m.endpoint.as_str()], None).await.expect("connect");
        let st = c.status().await.expect("status");
        out.push((st.raft_term(), st.leader()));
    }
    out
}

/// Every key of the burst as `c` holds it locally, page by page (a page stays under the
/// client's message limit).
async fn held(c: &mut Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = b"burst/".to_vec();
    loop {
        let opts = GetOptions::new().with_range("burst0").with_limit(200).with_serializable();
        let r = c.get(from.clone(), Some(opts)).await.expect("range");
        out.extend(r.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())));
        match r.kvs().last() {
            Some(last) if r.more() => from = [last.key(), b"\0"].concat(),
            _ => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_after_a_burst_installs_a_snapshot_without_an_election() {
    let mut cluster = Cluster::start(&["--snapshot-count", "200"]).await;
    let leader = cluster.leader().await;
    let back = (leader + 1) % 3;
    cluster.members[back].kill9();

    let endpoint = cluster.members[leader].endpoint.clone();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut c = Client::connect([endpoint.as_str()], None).await.expect("connect");
                for i in (w..KEYS).step_by(WRITERS) {
                    c.put(format!("burst/{i:05}"), value(i), None).await.expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let before = terms(&cluster).await;
    assert!(before.iter().all(|t| *t == before[0]), "the survivors disagree: {before:?}");

    let restarted = Instant::now();
    cluster.members[back].restart();
    cluster.members[back].wait_logged("installed snapshot").await;
    let mut c = cluster.members[back].client().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let rows = loop {
        let rows = held(&mut c).await;
        if rows.len() == KEYS {
            break rows;
        }
        assert!(Instant::now() < deadline, "the member holds {} of {KEYS} keys", rows.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let caught_up = restarted.elapsed();
    for (i, (k, v)) in rows.iter().enumerate() {
        assert_eq!(*k, format!("burst/{i:05}").into_bytes());
        assert!(*v == value(i), "burst/{i:05} has another value");
    }

    let files = cluster.members[back].data_dir().join("files");
    let snapshot_bytes: u64 =
        std::fs::read_dir(&files).expect("files dir").map(|e| e.unwrap().metadata().unwrap().len()).max().unwrap_or(0);
    let after = terms(&cluster).await;
    println!(
        "catch-up: {KEYS} keys of {VALUE_BYTES} B held {caught_up:?} after the restart, from a snapshot of {:.1} MB; \
         (term, leader) before {before:?}, after {after:?}",
        snapshot_bytes as f64 / 1e6
    );
    assert!(snapshot_bytes > 20_000_000, "the member caught up from the log, not a snapshot ({snapshot_bytes} B)");
    assert!(
        after.iter().all(|t| *t == before[0]),
        "an election happened while the member caught up: before {before:?}, after {after:?}"
    );
}
