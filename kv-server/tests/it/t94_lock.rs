//! Locks and elections through the etcd-client crate on a 3-member cluster: a lock through
//! every member, a second waiter granted only once the holder unlocks, fencing tokens (the lock
//! key's create revision) that only grow, a waiter whose lease is revoked while it waits is
//! refused; campaign, proclaim, leader, observe and resign across members.

use std::time::Duration;

use etcd_client::LockOptions;

use crate::harness::Cluster;

#[tokio::test]
async fn locks_pass_in_order_with_growing_fencing_tokens() {
    let cluster = Cluster::start(&[]).await;
    let mut last_token = 0;
    for (i, member) in cluster.members.iter().enumerate() {
        let mut a = member.client().await;
        let mut b = cluster.members[(i + 1) % 3].client().await;
        let la = a.lease_grant(30, None).await.unwrap().id();
        let lb = b.lease_grant(30, None).await.unwrap().id();
        let held = a.lock("job", Some(LockOptions::new().with_lease(la))).await.unwrap();
        let key = held.key().to_vec();
        assert!(key.starts_with(b"job/"), "{key:?}");
        let token = a.get(key.clone(), None).await.unwrap().kvs()[0].create_revision();
        assert!(token > last_token, "fencing tokens only grow: {token} after {last_token}");
        // The second waiter is not granted while the first holds the lock.
        let waiting = tokio::spawn(async move { b.lock("job", Some(LockOptions::new().with_lease(lb))).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "member {i}: granted while held");
        a.unlock(key).await.unwrap();
        let second = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("granted after unlock")
            .unwrap()
            .unwrap();
        let mut c = member.client().await;
        let next = c.get(second.key().to_vec(), None).await.unwrap().kvs()[0].create_revision();
        assert!(next > token, "the next holder's token {next} is above {token}");
        c.unlock(second.key().to_vec()).await.unwrap();
        last_token = next;
    }
}

#[tokio::test]
async fn a_waiter_whose_lease_is_gone_is_not_granted() {
    let cluster = Cluster::start(&[]).await;
    let mut a = cluster.members[0].client().await;
    let mut b = cluster.members[1].client().await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let lb = b.lease_grant(30, None).await.unwrap().id();
    let held = a.lock("solo", Some(LockOptions::new().with_lease(la))).await.unwrap();
    let mut b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.lock("solo", Some(LockOptions::new().with_lease(lb))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.lease_revoke(lb).await.unwrap();
    a.unlock(held.key().to_vec()).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("answered").unwrap();
    assert!(outcome.is_err(), "a waiter with no lease was granted: {outcome:?}");
}

/// For each member in turn as the first candidate's: campaign, leader, proclaim, observe and
/// resign, with the second candidate, the observer and the reader on the other members.
#[tokio::test]
async fn campaign_proclaim_observe_and_resign_through_every_member() {
    use etcd_client::{ProclaimOptions, ResignOptions};
    let cluster = Cluster::start(&[]).await;
    for i in 0..3 {
        let name = format!("pick{i}");
        let (first, second, third) = (i, (i + 1) % 3, (i + 2) % 3);
        let mut watcher = cluster.members[third].client().await;
        let mut observed = watcher.observe(name.as_str()).await.unwrap();
        let mut a = cluster.members[first].client().await;
        let mut b = cluster.members[second].client().await;
        let la = a.lease_grant(30, None).await.unwrap().id();
        let lb = b.lease_grant(30, None).await.unwrap().id();
        let won = a.campaign(name.as_str(), "a1", la).await.unwrap();
        let leader = won.leader().unwrap().clone();
        let got = b.leader(name.as_str()).await.unwrap();
        assert_eq!(got.kv().unwrap().value(), b"a1", "member {second}");
        a.proclaim("a2", Some(ProclaimOptions::new().with_leader(leader.clone()))).await.unwrap();
        let mut b2 = b.clone();
        let n = name.clone();
        let second_campaign = tokio::spawn(async move { b2.campaign(n, "b1", lb).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!second_campaign.is_finished(), "two leaders at once (member {first} first)");
        a.resign(Some(ResignOptions::new().with_leader(leader.clone()))).await.unwrap();
        let won_b =
            tokio::time::timeout(Duration::from_secs(5), second_campaign).await.expect("b leads").unwrap().unwrap();
        assert!(won_b.leader().unwrap().rev() > leader.rev(), "leaderships are ordered");
        // A stale leader's proclamation is refused.
        let stale = a.proclaim("a3", Some(ProclaimOptions::new().with_leader(leader))).await.unwrap_err();
        assert!(stale.to_string().contains("election: not leader"), "{stale}");
        // The observer saw every leader value in order.
        let mut values = Vec::new();
        while values.len() < 3 {
            let r = tokio::time::timeout(Duration::from_secs(5), observed.message())
                .await
                .expect("observed")
                .unwrap()
                .unwrap();
            values.push(r.kv().unwrap().value().to_vec());
        }
        assert_eq!(values, [b"a1".to_vec(), b"a2".to_vec(), b"b1".to_vec()], "observed through member {third}");
        b.resign(Some(ResignOptions::new().with_leader(won_b.leader().unwrap().clone()))).await.unwrap();
    }
}

/// Observe is told of every leader and every proclamation, in order, however quickly they
/// follow one another (a burst of proclamations, then candidates that resign as soon as they
/// lead), and two observers on different members see the same sequence.
#[tokio::test]
async fn observers_see_every_leader_of_a_burst_in_order() {
    use etcd_client::{ProclaimOptions, ResignOptions};
    let cluster = Cluster::start(&[]).await;
    let mut observers = Vec::new();
    for m in [1, 2] {
        let mut c = cluster.members[m].client().await;
        observers.push(c.observe("burst").await.unwrap());
    }
    let mut a = cluster.members[0].client().await;
    let la = a.lease_grant(30, None).await.unwrap().id();
    let leader = a.campaign("burst", "p0", la).await.unwrap().leader().unwrap().clone();
    let mut expected = vec![b"p0".to_vec()];
    for i in 1..40 {
        let value = format!("p{i}");
        a.proclaim(value.clone(), Some(ProclaimOptions::new().with_leader(leader.clone()))).await.unwrap();
        expected.push(value.into_bytes());
    }
    // Five candidates queue behind the leader; each resigns the moment it leads.
    let mut queued = Vec::new();
    for i in 0..5 {
        let mut c = cluster.members[i % 3].client().await;
        let lease = c.lease_grant(30, None).await.unwrap().id();
        let value = format!("c{i}");
        expected.push(value.clone().into_bytes());
        queued.push(tokio::spawn(async move {
            let won = c.campaign("burst", value, lease).await.unwrap();
            c.resign(Some(ResignOptions::new().with_leader(won.leader().unwrap().clone()))).await.unwrap();
        }));
        // Queued in this order: each campaign is stored before the next starts.
        loop {
            let r = a.get("burst/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
            if r.kvs().len() == i + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    a.resign(Some(ResignOptions::new().with_leader(leader))).await.unwrap();
    for q in queued {
        tokio::time::timeout(Duration::from_secs(10), q).await.expect("every candidate led").unwrap();
    }
    for (m, observed) in observers.iter_mut().enumerate() {
        let mut values = Vec::new();
        while values.len() < expected.len() {
            let r = tokio::time::timeout(Duration::from_secs(5), observed.message())
                .await
                .unwrap_or_else(|_| panic!("observer {m} stopped after {values:?}"))
                .unwrap()
                .unwrap();
            values.push(r.kv().unwrap().value().to_vec());
        }
        assert_eq!(values, expected, "observer {m}");
    }
}

/// A Lock or Campaign that names no lease is held on a lease the server grants (60 s, as
/// etcd's server does), so the lock or leadership ends if its holder vanishes, instead of
/// lasting for ever.
#[tokio::test]
async fn a_lock_or_campaign_without_a_lease_gets_one() {
    use etcd_client::ResignOptions;
    let cluster = Cluster::start(&[]).await;
    let mut c = cluster.members[1].client().await;
    let held = c.lock("no-lease", None).await.unwrap();
    let kv = c.get(held.key().to_vec(), None).await.unwrap().kvs()[0].clone();
    assert_ne!(kv.lease(), 0, "the lock key has a lease");
    let ttl = c.lease_time_to_live(kv.lease(), None).await.unwrap().ttl();
    assert!((1..=60).contains(&ttl), "the lock's lease expires: TTL {ttl}");
    c.unlock(held.key().to_vec()).await.unwrap();

    let won = c.campaign("no-lease-election", "me", 0).await.unwrap();
    let leader = won.leader().unwrap().clone();
    assert_ne!(leader.lease(), 0, "the leader key names its lease");
    let ttl = c.lease_time_to_live(leader.lease(), None).await.unwrap().ttl();
    assert!((1..=60).contains(&ttl), "the leadership's lease expires: TTL {ttl}");
    let kv = c.get(leader.key().to_vec(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), leader.lease());
    c.resign(Some(ResignOptions::new().with_leader(leader))).await.unwrap();
}

/// Bad input to the lock and election services is refused with etcd's errors, nothing is
/// queued, and the member keeps serving.
#[tokio::test]
async fn bad_lock_and_election_requests_are_refused() {
    let cluster = Cluster::start(&[]).await;
    let mut c = cluster.members[0].client().await;
    // Over --max-request-bytes (1.5 MiB by default), under the gRPC message limit (2 MiB).
    let huge = vec![b'n'; 1_700_000];
    let e = c.lock(huge.clone(), None).await.unwrap_err().to_string();
    assert!(e.contains("etcdserver: request is too large"), "{e}");
    let e = c.campaign(huge, "v", 0).await.unwrap_err().to_string();
    assert!(e.contains("etcdserver: request is too large"), "{e}");
    let e = c.unlock(Vec::<u8>::new()).await.unwrap_err().to_string();
    assert!(e.contains("etcdserver: key is not provided"), "{e}");
    let e = c.lock(Vec::<u8>::new(), None).await.unwrap_err().to_string();
    assert!(e.contains("etcdserver: key is not provided"), "{e}");
    let e = c.proclaim("v", None).await.unwrap_err().to_string();
    assert!(e.contains("leader") && e.contains("field must be provided"), "{e}");
    // Nothing was queued, and the member still grants locks.
    assert_eq!(c.get("", Some(etcd_client::GetOptions::new().with_all_keys())).await.unwrap().count(), 0);
    let held = c.lock("after", None).await.unwrap();
    c.unlock(held.key().to_vec()).await.unwrap();
}
