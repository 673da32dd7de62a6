//! Failures of a 3-member cluster under a write load: kill -9 of the leader (in-flight requests
//! end promptly, writes resume on a new leader, the killed member catches up) and kill -9 of
//! every member (nothing acknowledged is lost).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use crate::harness::{Cluster, CALM};

const WRITERS: usize = 16;

/// One put as the client saw it: when it started and ended, and whether it was acknowledged.
#[derive(Clone, Debug)]
struct Attempt {
    key: String,
    started: Instant,
    ended: Instant,
    ok: bool,
}

/// `WRITERS` tasks putting unique keys through every member in turn until `stop`; errors are
/// recorded and the writer carries on (after a short pause, as a client would).
fn start_load(
    cluster: &Cluster,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Attempt>>>, Vec<tokio::task::JoinHandle<()>>) {
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let endpoints = cluster.endpoints();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (log, stop, endpoints) = (log.clone(), stop.clone(), endpoints.clone());
        tasks.push(tokio::spawn(async move {
            let endpoint = endpoints[w % endpoints.len()].clone();
            let mut client: Option<Client> = None;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let c = match &mut client {
                    Some(c) => c,
                    None => match Client::connect([endpoint.as_str()], None).await {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    },
                };
                let key = format!("load/{w}/{i:06}");
                i += 1;
                let started = Instant::now();
                let r = c.put(key.as_str(), "v", None).await;
                let ended = Instant::now();
                log.lock().unwrap().push(Attempt { key, started, ended, ok: r.is_ok() });
                if r.is_err() {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    (log, tasks)
}

async fn wait_acked(log: &Mutex<Vec<Attempt>>, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.lock().unwrap().iter().filter(|a| a.ok).count() < n {
        assert!(Instant::now() < deadline, "the load never reached {n} acknowledged writes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads every acknowledged key back through `c`; returns (checked, lost).
async fn read_back(c: &mut Client, log: &[Attempt]) -> (usize, usize) {
    let mut lost = 0;
    let acked: Vec<&Attempt> = log.iter().filter(|a| a.ok).collect();
    for a in &acked {
        let r = c.get(a.key.as_str(), None).await.expect("read back");
        if r.kvs().is_empty() {
            eprintln!("lost acknowledged write {}", a.key);
            lost += 1;
        }
    }
    (acked.len(), lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill9_under_load_fails_over_and_the_member_catches_up() {
    // The default timing flags: this is the failover operators get.
    let mut cluster = Cluster::start(&[]).await;
    let election_timeout = Duration::from_millis(raft_core::node::DEFAULT_ELECTION_TIMEOUT_MS);
    let leader = cluster.leader().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = start_load(&cluster, stop.clone());
    wait_acked(&log, 300).await;

    let killed_at = Instant::now();
    cluster.members[leader].kill9();
    // Wait for writes to resume on the survivors.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if log.lock().unwrap().iter().any(|a| a.ok && a.started > killed_at) {
            break;
        }
        assert!(Instant::now() < deadline, "writes never resumed after the leader was killed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_so_far = log.lock().unwrap().iter().filter(|a| a.ok).count();
    wait_acked(&log, acked_so_far + 200).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap().clone();

    let first_ok = log.iter().filter(|a| a.ok && a.started > killed_at).map(|a| a.ended).min().unwrap();
    let in_flight: Vec<&Attempt> = log.iter().filter(|a| a.started <= killed_at && a.ended > killed_at).collect();
    let slowest = in_flight.iter().map(|a| a.ended - killed_at).max().unwrap_or_default();
    println!(
        "leader kill -9: first successful write {:?} after the kill; {} requests in flight, the last returned after {:?} ({} ok)",
        first_ok - killed_at,
        in_flight.len(),
        slowest,
        in_flight.iter().filter(|a| a.ok).count()
    );
    assert!(
        slowest <= 2 * election_timeout,
        "an in-flight request took {slowest:?} to return (bound: 2 x election timeout {election_timeout:?})"
    );

    // Every acknowledged write is there, through every survivor.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &survivors {
        let mut c = cluster.members[i].client().await;
        let (checked, lost) = read_back(&mut c, &log).await;
        assert_eq!(lost, 0, "member {i}: {lost} of {checked} acknowledged writes lost");
    }

    // The killed member restarts and catches up: a serializable (local) read of the last write
    // made through a survivor eventually sees it there.
    cluster.members[leader].restart();
    let mut c = cluster.members[survivors[0]].client().await;
    let last = c.put("after-failover", "caught-up", None).await.unwrap().header().unwrap().revision();
    let mut back = cluster.members[leader].client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = back.get("after-failover", Some(GetOptions::new().with_serializable())).await.unwrap();
        if r.kvs().first().is_some_and(|kv| kv.mod_revision() == last) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted member never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (checked, lost) = read_back(&mut back, &log).await;
    println!("restarted member: checked {checked} acknowledged writes, lost {lost}");
    assert_eq!(lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_every_member_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(&CALM).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = start_load(&cluster, stop.clone());
    wait_acked(&log, 500).await;
    for m in cluster.members.iter_mut() {
        m.kill9();
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    for m in cluster.members.iter_mut() {
        m.restart();
    }
    let log = log.lock().unwrap().clone();
    for (i, m) in cluster.members.iter().enumerate() {
        let mut c = m.client().await;
        let (checked, lost) = read_back(&mut c, &log).await;
        println!("after kill -9 of all members, through member {i}: checked {checked}, lost {lost}");
        assert_eq!(lost, 0);
    }
}
