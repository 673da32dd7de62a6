//! The five read consistency levels on a 3-member cluster, each shown doing what it promises
//! with members paused (SIGSTOP) at the worst moments. No wall-clock assertion: where time
//! matters, the test compares the instants the client saw with the lease or bound in force.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::maintenance_client::MaintenanceClient;
use kv_api::etcdserverpb::StatusRequest;
use kv_api::etcdserverpb::{RangeRequest, RangeResponse};
use kv_api::Consistency;
use nix::sys::signal::Signal;
use tonic::transport::Channel;

use crate::harness::{raw_kv, Cluster, CALM};

/// A read of `key` at `level` through our own stubs (etcd-client cannot set the extensions).
async fn read(
    kv: &mut KvClient<Channel>,
    key: &str,
    level: Consistency,
    min_revision: i64,
    max_staleness_ms: i64,
) -> Result<RangeResponse, tonic::Status> {
    let req = RangeRequest {
        key: key.into(),
        consistency: level as i32,
        min_revision,
        max_staleness_ms,
        ..Default::default()
    };
    kv.range(req).await.map(|r| r.into_inner())
}

fn value(r: &RangeResponse) -> Option<String> {
    r.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn served(r: &RangeResponse) -> i32 {
    r.header.as_ref().map_or(0, |h| h.served_consistency)
}

/// Puts through `c` until one is acknowledged (a leader change may refuse some); returns the
/// revision.
async fn put_until_ok(c: &mut Client, key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.put(key, value, None).await {
            Ok(r) => return r.header().unwrap().revision(),
            Err(e) => assert!(Instant::now() < deadline, "no write succeeded: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_never_serves_an_old_value_and_followers_serve_serializable() {
    let cluster = Cluster::start(&[]).await;
    let l = cluster.leader().await;
    let (f1, f2) = ((l + 1) % 3, (l + 2) % 3);
    let mut via_leader = cluster.members[l].client().await;
    via_leader.put("k", "v1", None).await.unwrap();
    let mut old_leader_kv = raw_kv(&cluster.members[l].endpoint).await;
    let mut f1_kv = raw_kv(&cluster.members[f1].endpoint).await;
    let mut c1 = cluster.members[f1].client().await;

    cluster.members[l].signal(Signal::SIGSTOP);
    // Serializable on a follower: answered locally, whatever the leader does.
    let r = read(&mut f1_kv, "k", Consistency::Serializable, 0, 0).await.unwrap();
    assert_eq!((value(&r).as_deref(), served(&r)), (Some("v1"), Consistency::Serializable as i32));
    // The stock client's serializable get is served locally too.
    let r = c1.get("k", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "v1");

    // The two others elect a leader and take a newer write.
    put_until_ok(&mut c1, "k", "v2").await;
    cluster.members[l].signal(Signal::SIGCONT);
    // The old leader resumes believing it leads: a linearizable read there must see v2 or fail.
    for _ in 0..20 {
        match read(&mut old_leader_kv, "k", Consistency::Linearizable, 0, 0).await {
            Ok(r) => assert_eq!(value(&r).as_deref(), Some("v2"), "a linearizable read returned an old value"),
            Err(e) => assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}"),
        }
    }
    // And the stock client's plain get, through any member, is linearizable.
    for i in [l, f1, f2] {
        let mut c = cluster.members[i].client().await;
        assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value_str().unwrap(), "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_stop_when_the_lease_runs_out() {
    // election timeout 1000 ms: the lease is 900 ms.
    let lease = Duration::from_millis(900);
    let cluster = Cluster::start(&CALM).await;
    let l = cluster.leader().await;
    let followers = [(l + 1) % 3, (l + 2) % 3];
    let mut c = cluster.members[l].client().await;
    c.put("k", "v", None).await.unwrap();
    let mut kv = raw_kv(&cluster.members[l].endpoint).await;
    // A follower forwards lease reads to the leader's lease.
    let mut fkv = raw_kv(&cluster.members[followers[0]].endpoint).await;
    let r = read(&mut fkv, "k", Consistency::Lease, 0, 0).await.unwrap();
    assert_eq!((value(&r).as_deref(), served(&r)), (Some("v"), Consistency::Lease as i32));

    // A linearizable read confirms leadership now, starting a fresh lease; then both followers stop.
    read(&mut kv, "k", Consistency::Linearizable, 0, 0).await.unwrap();
    for f in followers {
        cluster.members[f].signal(Signal::SIGSTOP);
    }
    let paused_at = Instant::now();
    let mut served_at = Vec::new();
    let mut refused = 0;
    while refused < 3 {
        let started = Instant::now();
        match read(&mut kv, "k", Consistency::Lease, 0, 0).await {
            Ok(r) => {
                assert_eq!(value(&r).as_deref(), Some("v"));
                served_at.push(started);
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(e.message().contains("lease"), "{e:?}");
                refused += 1;
            }
        }
        assert!(paused_at.elapsed() < Duration::from_secs(30), "lease reads were never refused");
    }
    for f in followers {
        cluster.members[f].signal(Signal::SIGCONT);
    }
    println!("followers paused: {} lease reads served, then refused", served_at.len());
    assert!(!served_at.is_empty(), "the leader served no lease read inside its lease");
    for s in &served_at {
        assert!(*s < paused_at + lease, "a lease read that began {:?} after the pause was served", *s - paused_at);
    }
    // With the followers back, lease reads are served again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while read(&mut kv, "k", Consistency::Lease, 0, 0).await.is_err() {
        assert!(Instant::now() < deadline, "lease reads never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_see_the_clients_own_writes_on_a_member_that_missed_them() {
    let cluster = Cluster::start(&CALM).await;
    let l = cluster.leader().await;
    let f = (l + 1) % 3;
    let mut c = cluster.members[l].client().await;
    let mut fkv = raw_kv(&cluster.members[f].endpoint).await;
    cluster.members[f].signal(Signal::SIGSTOP);
    let rev = c.put("mine", "written", None).await.unwrap().header().unwrap().revision();
    cluster.members[f].signal(Signal::SIGCONT);
    let r = read(&mut fkv, "mine", Consistency::Session, rev, 0).await.unwrap();
    assert_eq!((value(&r).as_deref(), served(&r)), (Some("written"), Consistency::Session as i32));
    assert!(r.header.unwrap().revision >= rev);
    // A revision nobody has reached is refused once the request timeout passes, clearly.
    let err = read(&mut fkv, "mine", Consistency::Session, rev + 1_000_000, 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("not applied"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_reads_refuse_while_behind_and_serve_once_caught_up() {
    let bound_ms = 300;
    let mut flags = CALM.to_vec();
    flags.extend(["--request-timeout", "1s"]);
    let cluster = Cluster::start(&flags).await;
    let l = cluster.leader().await;
    let f = (l + 1) % 3;
    let mut c = cluster.members[l].client().await;
    let mut fkv = raw_kv(&cluster.members[f].endpoint).await;
    c.put("b", "old", None).await.unwrap();

    // The follower is paused while a write is acknowledged, for longer than the bound.
    cluster.members[f].signal(Signal::SIGSTOP);
    c.put("b", "new", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2 * bound_ms as u64)).await;
    cluster.members[f].signal(Signal::SIGCONT);
    // Every read it serves is within the bound, so it includes the write acknowledged more than
    // the bound ago; it may refuse until it has caught up.
    let (mut refusals, deadline) = (0, Instant::now() + Duration::from_secs(30));
    loop {
        match read(&mut fkv, "b", Consistency::Bounded, 0, bound_ms).await {
            Ok(r) => {
                assert_eq!(value(&r).as_deref(), Some("new"), "a bounded read served data older than the bound");
                assert_eq!(served(&r), Consistency::Bounded as i32);
                break;
            }
            Err(e) => {
                assert!(e.message().contains("behind the leader") || e.message().contains("contact"), "{e:?}");
                refusals += 1;
            }
        }
        assert!(Instant::now() < deadline, "bounded reads never served after catching up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // While it hears nothing from the leader for longer than the bound, it refuses.
    cluster.members[l].signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(3 * bound_ms as u64)).await;
    let err = read(&mut fkv, "b", Consistency::Bounded, 0, bound_ms).await.unwrap_err();
    cluster.members[l].signal(Signal::SIGCONT);
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("behind the leader"), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while read(&mut fkv, "b", Consistency::Bounded, 0, bound_ms).await.is_err() {
        assert!(Instant::now() < deadline, "bounded reads never resumed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("bounded reads: {refusals} refused right after the pause, then served");
    // A bound of zero or less is a bad request.
    let err = read(&mut fkv, "b", Consistency::Bounded, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_readers_share_quorum_rounds() {
    const READERS: usize = 64;
    let secs = 3;
    let cluster = Cluster::start(&CALM).await;
    let l = cluster.leader().await;
    let mut status = MaintenanceClient::connect(cluster.members[l].endpoint.clone()).await.unwrap();
    let mut c = cluster.members[l].client().await;
    c.put("r", "x".repeat(256), None).await.unwrap();
    for serializable in [false, true] {
        let mut clients = Vec::new();
        for r in 0..READERS {
            clients.push(cluster.members[r % 3].client().await);
        }
        let before = status.status(StatusRequest {}).await.unwrap().into_inner();
        let until = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for mut c in clients {
            tasks.push(tokio::spawn(async move {
                let opts = serializable.then(|| GetOptions::new().with_serializable());
                let mut n = 0u64;
                while Instant::now() < until {
                    c.get("r", opts.clone()).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut reads = 0;
        for t in tasks {
            reads += t.await.unwrap();
        }
        let after = status.status(StatusRequest {}).await.unwrap().into_inner();
        let rounds = after.read_index_rounds - before.read_index_rounds;
        let level = if serializable { "serializable" } else { "linearizable" };
        println!(
            "{READERS} {level} readers: {reads} reads ({:.0}/s), {rounds} quorum rounds",
            reads as f64 / secs as f64
        );
        if serializable {
            assert_eq!(rounds, 0, "serializable reads never confirm leadership");
        } else {
            assert!(rounds * 2 <= reads, "{rounds} quorum rounds for {reads} linearizable reads");
        }
    }
}
