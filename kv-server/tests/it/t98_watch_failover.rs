//! Watchers that use kv-client's resuming watch see every event of their range exactly once,
//! in order, while writes go on across a kill -9 of the leader and of a watcher's member.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_client::{Client, ClientError, Options, Put, Watch};

use crate::harness::{Cluster, CALM};

/// The events one watcher delivered: (key, value, revision), in the order delivered.
type Seen = Vec<(String, String, i64)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_watchers_see_every_event_once_in_order_across_kills() {
    let mut cluster = Cluster::start(&CALM).await;
    let endpoints = cluster.endpoints();
    let writer = Client::connect(&endpoints, Options::default()).await.unwrap();

    // Three watchers, each starting on a different member: a client starts on the leader when
    // it can reach it, so the other two are given only the followers, in either order.
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let lists = [
        endpoints.clone(),
        vec![endpoints[followers[0]].clone(), endpoints[followers[1]].clone()],
        vec![endpoints[followers[1]].clone(), endpoints[followers[0]].clone()],
    ];
    let mut watchers = Vec::new();
    for mine in lists {
        let client = Client::connect(&mine, Options::default()).await.unwrap();
        let mut watcher = client.watch(Watch::prefix("w/")).await.unwrap();
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let events = watcher.next().await.expect("the watch keeps going");
                let mut log = log.lock().unwrap();
                for e in events {
                    let kv = e.kv.unwrap();
                    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
                    let done = kv.key == b"w/end";
                    log.push((text(kv.key), text(kv.value), kv.mod_revision));
                    if done {
                        return;
                    }
                }
            }
        });
        watchers.push((seen, task));
    }

    // Writes with unique values: acknowledged with their revision, or unknown.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let unknown: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, stop, acked, unknown) = (writer.clone(), stop.clone(), acked.clone(), unknown.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("{w}-{i}");
                i += 1;
                match client.put(Put::new(format!("w/{}", i % 7), value.clone())).await {
                    Ok(r) => {
                        acked.lock().unwrap().insert(value, r.header.unwrap().revision);
                    }
                    Err(ClientError::OutcomeUnknown(_)) => unknown.lock().unwrap().push(value),
                    Err(e) => panic!("a write failed with {e} instead of succeeding or being unknown"),
                }
            }
        }));
    }
    let wait_for = |n: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The leader, where watcher 0 started, then the member watcher 1 started on.
    wait_for(200).await;
    cluster.members[leader].kill9();
    wait_for(500).await;
    cluster.members[leader].restart();
    let victim = followers[0];
    wait_for(700).await;
    cluster.members[victim].kill9();
    wait_for(1000).await;
    cluster.members[victim].restart();
    wait_for(1200).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let end = writer.put(Put::new("w/end", "end")).await.unwrap().header.unwrap().revision;
    for (i, (seen, task)) in watchers.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(60), task).await.expect("the watcher reaches the end").unwrap();
        let seen = seen.lock().unwrap();
        let revisions: Vec<i64> = seen.iter().map(|e| e.2).collect();
        let out_of_order = revisions.windows(2).filter(|w| w[1] < w[0]).count();
        let mut values: BTreeMap<&str, usize> = BTreeMap::new();
        for e in seen.iter() {
            *values.entry(e.1.as_str()).or_default() += 1;
        }
        let duplicated = values.values().filter(|n| **n > 1).count();
        let acked = acked.lock().unwrap();
        let missing = acked.keys().filter(|v| !values.contains_key(v.as_str())).count();
        let wrong_revision = seen.iter().filter(|e| acked.get(e.1.as_str()).is_some_and(|r| *r != e.2)).count();
        let unknown = unknown.lock().unwrap();
        let invented = seen
            .iter()
            .filter(|e| e.1 != "end" && !acked.contains_key(e.1.as_str()) && !unknown.contains(&e.1))
            .count();
        println!(
            "watcher {i}: {} events checked up to revision {end}, missing: {missing}, duplicated: {duplicated}, \
             out of order: {out_of_order}, wrong revision: {wrong_revision}, invented: {invented} \
             ({} acknowledged writes, {} unknown)",
            seen.len(),
            acked.len(),
            unknown.len()
        );
        assert_eq!((missing, duplicated, out_of_order, wrong_revision, invented), (0, 0, 0, 0, 0), "watcher {i}");
    }
}
