//! kv-client against a real 3-member cluster, and the same application code run embedded and
//! remote through `KvApi`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_api::etcdserverpb::{PutRequest, RangeRequest, WatchCreateRequest};
use kv_api::{Consistency, KvApi, WatchEvents};
use kv_client::{Client, ClientError, Options};
use nix::sys::signal::Signal;

use crate::harness::{Cluster, CALM};

/// A write and its outcome: Some(true) acknowledged, None unknown (failures fail the test).
type Written = (String, Option<bool>);

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest { key: key.into(), value: value.into(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_prefers_the_leader_and_refuses_dead_endpoints_clearly() {
    let cluster = Cluster::start(&CALM).await;
    let l = cluster.leader().await;
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(l + 1); // the leader last
    let c = Client::connect(&endpoints, Options::default()).await.unwrap();
    assert_eq!(c.endpoint(), cluster.members[l].endpoint, "calls go to the leader first");

    let dead = vec!["http://127.0.0.1:1".to_string()];
    match Client::connect(&dead, Options::default()).await {
        Err(ClientError::Unreachable { endpoints, .. }) => assert_eq!(endpoints, dead[0]),
        other => panic!("expected Unreachable, got {:?}", other.map(|c| c.endpoint().to_string())),
    }
    // A dead endpoint first in the list is skipped.
    let mut with_dead = dead.clone();
    with_dead.extend(cluster.endpoints());
    let c = Client::connect(&with_dead, Options::default()).await.unwrap();
    c.put(put("k", "v")).await.unwrap();
    assert_eq!(c.get("k", Consistency::Linearizable).await.unwrap().as_deref(), Some(&b"v"[..]));

    // Builders, and a per-call bound: a write with no time to complete has an unknown outcome.
    use kv_client::{Get, Put};
    c.put(Put::new("app/x", "1")).await.unwrap();
    let r = c.range(Get::prefix("app/").count_only()).await.unwrap();
    assert_eq!(r.count, 1);
    // The leader (where calls go first) is paused: the put is sent and never answered.
    assert_eq!(c.endpoint(), cluster.members[l].endpoint);
    cluster.members[l].signal(Signal::SIGSTOP);
    let outcome = c.with_timeout(Duration::from_millis(300)).put(Put::new("app/y", "2")).await;
    cluster.members[l].signal(Signal::SIGCONT);
    match outcome {
        Err(ClientError::OutcomeUnknown(_)) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_working_through_a_leader_kill_and_reports_unknown_outcomes() {
    let mut cluster = Cluster::start(&[]).await;
    let l = cluster.leader().await;
    let client = Client::connect(&cluster.endpoints(), Options::default()).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Written>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, stop, log) = (client.clone(), stop.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("c/{w}/{i}");
                i += 1;
                let outcome = match client.put(put(&key, "v")).await {
                    Ok(_) => Some(true),
                    Err(ClientError::OutcomeUnknown(_)) => None,
                    Err(e) => panic!("a write failed with {e} instead of succeeding or being unknown"),
                };
                log.lock().unwrap().push((key, outcome));
            }
        }));
    }
    let acked =
        |log: &Mutex<Vec<(String, Option<bool>)>>| log.lock().unwrap().iter().filter(|e| e.1 == Some(true)).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked(&log) < 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.members[l].kill9();
    let before = acked(&log);
    while acked(&log) < before + 200 {
        assert!(Instant::now() < deadline, "the client never resumed writing after the leader died");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    let unknown = log.iter().filter(|e| e.1.is_none()).count();
    println!("through a leader kill -9: {} writes acknowledged, {unknown} with an unknown outcome", acked_count(&log));
    assert!(unknown >= 1, "writes in flight at the killed leader have an unknown outcome, not success or failure");
    // Every acknowledged write is there.
    for (key, outcome) in &log {
        if *outcome == Some(true) {
            let v = client.get(key.as_str(), Consistency::Linearizable).await.unwrap();
            assert_eq!(v.as_deref(), Some(&b"v"[..]), "acknowledged {key} is missing");
        }
    }
}

fn acked_count(log: &[Written]) -> usize {
    log.iter().filter(|e| e.1 == Some(true)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_through_any_member_see_the_clients_own_writes() {
    let cluster = Cluster::start(&CALM).await;
    let l = cluster.leader().await;
    let writer = Client::connect(&cluster.endpoints(), Options::default()).await.unwrap();
    for f in [(l + 1) % 3, (l + 2) % 3] {
        // The member is paused while the client writes, so it has not applied the write when
        // the session read arrives.
        cluster.members[f].signal(Signal::SIGSTOP);
        let key = format!("s{f}");
        writer.put(put(&key, "mine")).await.unwrap();
        cluster.members[f].signal(Signal::SIGCONT);
        let reader =
            Client::connect(std::slice::from_ref(&cluster.members[f].endpoint), Options::default()).await.unwrap();
        reader.continue_session(writer.session_revision());
        let r = reader
            .range(RangeRequest { key: key.into(), consistency: Consistency::Session as i32, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(r.kvs[0].value, b"mine");
        assert_eq!(r.header.unwrap().served_consistency, Consistency::Session as i32);
    }
    // One client over every member: its own session token rides along automatically.
    let mut seen = Vec::new();
    for i in 0..6 {
        writer.put(put("auto", &i.to_string())).await.unwrap();
        seen.push(writer.get("auto", Consistency::Session).await.unwrap().unwrap());
    }
    assert_eq!(seen, (0..6).map(|i: i32| i.to_string().into_bytes()).collect::<Vec<_>>());
}

/// The example application's own code (kv-server/examples/counter), run here both ways.
#[path = "../../examples/counter/app.rs"]
mod counter_app;

/// The counter values a watch of the counter delivers until it reaches `until`.
async fn counter_values<W: WatchEvents>(watcher: &mut W, until: i64) -> Vec<i64> {
    let mut values = Vec::new();
    while values.last() != Some(&until) {
        let events = tokio::time::timeout(Duration::from_secs(20), watcher.next())
            .await
            .expect("the watch delivers within the wait")
            .expect("the watch works");
        for e in events {
            let value = e.kv.expect("an event carries its key").value;
            values.push(String::from_utf8(value).unwrap().parse::<i64>().unwrap());
        }
    }
    values
}

/// The example application's check: concurrent bumps never lose an increment, and a watch
/// through the same API sees every value once, in order, live and replayed.
async fn counter_app_check<A: KvApi + 'static>(api: Arc<A>) {
    let watch = |start_revision| WatchCreateRequest { key: b"counter".to_vec(), start_revision, ..Default::default() };
    let mut live = api.watch(watch(0)).await.unwrap();
    let from = live.next_revision();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    counter_app::bump(&*api, "counter").await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter_app::read(&*api, "counter").await.unwrap(), 40, "no increment lost");
    assert!(api.status().await.unwrap().raft_index > 0);
    let every: Vec<i64> = (1..=40).collect();
    assert_eq!(counter_values(&mut live, 40).await, every, "the live watch saw every value once, in order");
    let mut replay = api.watch(watch(from)).await.unwrap();
    assert_eq!(counter_values(&mut replay, 40).await, every, "the replay from the start revision too");
    assert!(replay.next_revision() > from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_application_code_runs_embedded_and_remote() {
    // Embedded: a one-member store inside this process.
    let dir = tempfile::tempdir().unwrap();
    let cfg = kv_server::ServerConfig {
        data_dir: dir.path().join("data"),
        listen_client_urls: vec!["http://127.0.0.1:0".into()],
        listen_peer_urls: vec!["http://127.0.0.1:0".into()],
        ..kv_server::ServerConfig::default()
    };
    let embedded = Arc::new(kv_server::embed(cfg).await.unwrap());
    counter_app_check(embedded.clone()).await;
    lease_app_check(&*embedded).await;
    Arc::try_unwrap(embedded).ok().expect("no other owner").stop().await.unwrap();

    // Remote: a 3-member cluster through kv-client.
    let cluster = Cluster::start(&CALM).await;
    let client = Client::connect(&cluster.endpoints(), Options::default()).await.unwrap();
    lease_app_check(&client).await;
    counter_app_check(Arc::new(client)).await;
}

/// The lease calls of [`KvApi`]: a key attached to a lease lives while it is renewed and goes
/// with it, the same embedded and remote.
async fn lease_app_check<A: KvApi>(api: &A) {
    use kv_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest};
    let granted = api.lease_grant(LeaseGrantRequest { ttl: 30, id: 0 }).await.unwrap();
    assert!(granted.id > 0 && granted.ttl == 30, "{granted:?}");
    let put = PutRequest { key: b"svc/me".to_vec(), value: b"up".to_vec(), lease: granted.id, ..Default::default() };
    api.put(put).await.unwrap();
    assert_eq!(api.lease_keep_alive_once(granted.id).await.unwrap(), 30);
    let ttl = api.lease_time_to_live(LeaseTimeToLiveRequest { id: granted.id, keys: true }).await.unwrap();
    assert_eq!((ttl.granted_ttl, ttl.keys.clone()), (30, vec![b"svc/me".to_vec()]), "{ttl:?}");
    assert!(api.leases().await.unwrap().leases.iter().any(|l| l.id == granted.id));
    api.lease_revoke(LeaseRevokeRequest { id: granted.id }).await.unwrap();
    assert_eq!(api.get("svc/me", Consistency::Linearizable).await.unwrap(), None, "the key went with its lease");
    assert_eq!(api.lease_keep_alive_once(granted.id).await.unwrap(), 0, "a revoked lease renews to 0");
    let gone = api.lease_time_to_live(LeaseTimeToLiveRequest { id: granted.id, keys: false }).await.unwrap();
    assert_eq!(gone.ttl, -1);
    let again = api.lease_revoke(LeaseRevokeRequest { id: granted.id }).await.unwrap_err();
    assert!(again.to_string().contains("etcdserver: requested lease not found"), "{again}");
}
