//! Leases through the etcd-client crate on a 3-member cluster: grant, keep-alive, time-to-live,
//! list and revoke through every member with etcd's answers and errors; expiry and revocation
//! delete the attached keys exactly once (one delete event each), never before the lease's
//! deadline; a lease kept alive across a kill -9 of the leader keeps its keys, and one
//! abandoned expires within TTL + checkpoint interval + one election + 1 s, also when the
//! leader is killed in between.

use std::time::{Duration, Instant};

use etcd_client::{
    Client, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions, WatchStream,
};

use crate::harness::Cluster;

/// The members' defaults: election timeout 100 ms, lease checkpoint interval 500 ms.
const ELECTION: Duration = Duration::from_millis(100);
const CHECKPOINT: Duration = Duration::from_millis(500);

/// More than a linearizable get on loopback takes to be served.
const GET_LATENCY: Duration = Duration::from_millis(100);

/// The acceptance bound on an abandoned lease's life past its TTL.
fn expiry_bound(ttl: Duration) -> Duration {
    ttl + CHECKPOINT + 3 * ELECTION + Duration::from_secs(1)
}

fn etcd_message(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// Every event the watch delivers until `quiet` passes with none.
async fn drain(stream: &mut WatchStream, quiet: Duration) -> Vec<(EventType, Vec<u8>, i64)> {
    let mut events = Vec::new();
    while let Ok(Ok(Some(r))) = tokio::time::timeout(quiet, stream.message()).await {
        for e in r.events() {
            let kv = e.kv().unwrap();
            events.push((e.event_type(), kv.key().to_vec(), kv.mod_revision()));
        }
    }
    events
}

#[tokio::test]
async fn leases_through_every_member() {
    let cluster = Cluster::start(&[]).await;
    let mut watcher = cluster.members[0].client().await;
    let mut watch = watcher.watch("lease/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    for (i, member) in cluster.members.iter().enumerate() {
        let mut c = member.client().await;
        // Server-chosen and client-chosen ids; TTLs below the minimum are raised to it.
        let picked = c.lease_grant(30, None).await.unwrap();
        assert!(picked.id() > 0 && picked.ttl() == 30, "member {i}: {picked:?}");
        let mine = 7_000 + i as i64;
        let granted = c.lease_grant(1, Some(LeaseGrantOptions::new().with_id(mine))).await.unwrap();
        assert_eq!(granted.id(), mine);
        assert!(granted.ttl() >= 2, "a 1 s lease is raised to the minimum, got {}", granted.ttl());
        let again = c.lease_grant(10, Some(LeaseGrantOptions::new().with_id(mine))).await.unwrap_err();
        assert_eq!(etcd_message(again), "etcdserver: lease already exists");
        let huge = c.lease_grant(9_000_000_001, None).await.unwrap_err();
        assert_eq!(etcd_message(huge), "etcdserver: too large lease TTL");

        // Keys attach through Put; time-to-live lists them.
        let id = picked.id();
        for k in ["a", "b"] {
            c.put(format!("lease/{i}/{k}"), "v", Some(PutOptions::new().with_lease(id))).await.unwrap();
        }
        let unknown = c.put("lease/x", "v", Some(PutOptions::new().with_lease(424_242))).await.unwrap_err();
        assert_eq!(etcd_message(unknown), "etcdserver: requested lease not found");
        let ttl = c.lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 30);
        assert!((28..=30).contains(&ttl.ttl()), "member {i}: remaining {}", ttl.ttl());
        let keys: Vec<&[u8]> = ttl.keys().iter().map(|k| k.as_slice()).collect();
        assert_eq!(keys, [format!("lease/{i}/a").as_bytes(), format!("lease/{i}/b").as_bytes()]);

        // Keep-alive answers with the granted TTL; an unknown lease with 0.
        let (mut keeper, mut replies) = c.lease_keep_alive(id).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let r = replies.message().await.unwrap().unwrap();
        assert_eq!((r.id(), r.ttl()), (id, 30));
        // The server answers TTL 0; etcd-client reports that as the lease's loss.
        match c.lease_keep_alive(424_242).await.map(|_| ()) {
            Err(etcd_client::Error::LeaseKeepAliveError(m)) => assert_eq!(m, "lease not found"),
            other => panic!("member {i}: keep-alive of an unknown lease answered {other:?}"),
        }

        let listed: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
        assert!(listed.contains(&id) && listed.contains(&mine), "member {i}: {listed:?}");

        // Revoke deletes the keys; the lease is then unknown everywhere.
        c.lease_revoke(id).await.unwrap();
        assert_eq!(
            c.get(format!("lease/{i}/"), Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap().count(),
            0
        );
        assert_eq!(c.lease_time_to_live(id, None).await.unwrap().ttl(), -1);
        let gone = c.lease_revoke(id).await.unwrap_err();
        assert_eq!(etcd_message(gone), "etcdserver: requested lease not found");
        c.lease_revoke(mine).await.unwrap();
    }
    // Each revoke deleted its two keys in one revision: one delete event per key.
    let events = drain(&mut watch, Duration::from_millis(500)).await;
    let deletes: Vec<_> = events.iter().filter(|e| e.0 == EventType::Delete).collect();
    assert_eq!(deletes.len(), 6, "{events:?}");
    for pair in deletes.chunks(2) {
        assert_eq!(pair[0].2, pair[1].2, "one revoke, one revision: {pair:?}");
    }
}

/// Polls `key` until it is gone; returns how long after `since` it was last seen and first
/// missed.
async fn watch_vanish(c: &mut Client, key: &str, since: Instant, give_up: Duration) -> (Duration, Duration) {
    let mut last_seen = Duration::ZERO;
    loop {
        let asked = since.elapsed();
        if let Ok(r) = c.get(key, None).await {
            if r.count() == 0 {
                return (last_seen, asked);
            }
            last_seen = asked;
        }
        assert!(asked < give_up, "{key} still there {asked:?} after its lease was granted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_abandoned_lease_expires_after_its_deadline_deleting_its_keys_once() {
    let cluster = Cluster::start(&[]).await;
    let mut c = cluster.members[1].client().await;
    let mut watcher = cluster.members[2].client().await;
    let mut watch = watcher.watch("gone/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(watch.message().await.unwrap().unwrap().created());
    let asked = Instant::now();
    let lease = c.lease_grant(3, None).await.unwrap();
    let ttl = Duration::from_secs(lease.ttl() as u64);
    for k in ["gone/1", "gone/2", "gone/3"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(lease.id()))).await.unwrap();
    }
    let (last_seen, missed) = watch_vanish(&mut c, "gone/1", asked, expiry_bound(ttl) + Duration::from_secs(5)).await;
    println!("lease of {ttl:?}: key last seen {last_seen:?} and gone {missed:?} after the grant was asked");
    // The lease's deadline runs from the grant's apply, after it was asked; a get that found
    // the key gone was served less than GET_LATENCY after it was sent.
    assert!(missed + GET_LATENCY >= ttl, "gone before its deadline: {missed:?}");
    assert!(missed <= expiry_bound(ttl), "expired {missed:?} after the grant, bound {:?}", expiry_bound(ttl));
    let events = drain(&mut watch, Duration::from_millis(500)).await;
    let deletes: Vec<_> = events.iter().filter(|e| e.0 == EventType::Delete).collect();
    assert_eq!(deletes.len(), 3, "one delete per key: {events:?}");
    assert!(deletes.iter().all(|d| d.2 == deletes[0].2), "in the revocation's one revision: {deletes:?}");
    assert_eq!(c.lease_time_to_live(lease.id(), None).await.unwrap().ttl(), -1);
}

/// Renews `id` every `every` through whichever member answers, until told to stop; returns how
/// many renewals answered TTL 0 (the lease was lost).
async fn keep_renewing(
    endpoints: Vec<String>,
    id: i64,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> u32 {
    let mut lost = 0;
    let mut next = 0;
    while !*stop.borrow() {
        let endpoint = endpoints[next % endpoints.len()].clone();
        let renewed = async {
            let mut c = Client::connect([endpoint], None).await?;
            let (mut keeper, mut replies) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            replies.message().await
        };
        match tokio::time::timeout(Duration::from_secs(1), renewed).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => lost += 1,
            // This member is down or has no leader yet: the next one.
            _ => {
                next += 1;
                continue;
            }
        }
        tokio::time::sleep(every).await;
    }
    lost
}

#[tokio::test]
async fn leases_across_a_leader_kill() {
    let mut cluster = Cluster::start(&[]).await;
    let leader = cluster.leader().await;
    let other = (leader + 1) % 3;
    let mut c = cluster.members[other].client().await;
    let kept = c.lease_grant(3, None).await.unwrap();
    c.put("kept", "v", Some(PutOptions::new().with_lease(kept.id()))).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let renewer = tokio::spawn(keep_renewing(cluster.endpoints(), kept.id(), Duration::from_secs(1), stopped));

    let asked = Instant::now();
    let abandoned = c.lease_grant(3, None).await.unwrap();
    let ttl = Duration::from_secs(abandoned.ttl() as u64);
    c.put("abandoned", "v", Some(PutOptions::new().with_lease(abandoned.id()))).await.unwrap();
    // The leader dies shortly before the abandoned lease would expire: the new leader must
    // expire it from the last checkpoint, not from its full TTL.
    tokio::time::sleep(ttl - Duration::from_millis(700)).await;
    cluster.members[leader].kill9();
    let (_, missed) = watch_vanish(&mut c, "abandoned", asked, expiry_bound(ttl) + Duration::from_secs(10)).await;
    println!("leader killed; the abandoned lease of {ttl:?} expired {missed:?} after the grant was asked");
    assert!(missed + GET_LATENCY >= ttl, "gone before its deadline: {missed:?}");
    assert!(missed <= expiry_bound(ttl), "expired {missed:?} after the grant, bound {:?}", expiry_bound(ttl));

    // The kept lease outlives several of its TTLs and the kill; its key stays.
    tokio::time::sleep(2 * ttl).await;
    stop.send(true).unwrap();
    let lost = renewer.await.unwrap();
    assert_eq!(lost, 0, "a renewal found the kept lease gone");
    assert_eq!(c.get("kept", None).await.unwrap().count(), 1, "the kept lease's key is there");
    let ttl_left = c.lease_time_to_live(kept.id(), None).await.unwrap();
    assert!(ttl_left.ttl() > 0, "kept lease: {ttl_left:?}");
    cluster.members[leader].restart();
}
