//! kv-client's lease keep-alive helper against a real one-member server: it keeps a lease
//! alive well past its TTL, and reports its loss when it is revoked and when no member answers
//! before the lease runs out.
#![cfg(not(madsim))]

use std::time::Duration;

mod common;

use common::one_member as server;
use kv_client::{Client, LeaseLost, LeaseState, Options, Put};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_outlives_its_ttl_and_its_loss_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let srv = server(&dir).await;
    let client = Client::connect(&srv.client_urls, Options::default()).await.unwrap();
    let lease = client.lease_grant(2, 0).await.unwrap();
    client.put(Put::new("svc/me", "up").lease(lease.id)).await.unwrap();
    let mut kept = client.keep_alive(lease.id).await.unwrap();
    assert!(matches!(kept.state(), LeaseState::Alive { ttl: 2, .. }), "{:?}", kept.state());
    // Three TTLs: without the renewals the key would be gone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(matches!(kept.state(), LeaseState::Alive { .. }), "{:?}", kept.state());
    assert_eq!(client.range(kv_client::Get::key("svc/me")).await.unwrap().count, 1);
    client.lease_revoke(lease.id).await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(3), kept.lost()).await.expect("the loss is reported");
    assert_eq!(why, LeaseLost::Expired);

    // A lease whose members all go away is reported lost once its last renewal runs out.
    let other = client.lease_grant(2, 0).await.unwrap();
    let mut kept = client.keep_alive(other.id).await.unwrap();
    let LeaseState::Alive { until, .. } = kept.state() else { panic!("{:?}", kept.state()) };
    srv.stop().await.unwrap();
    let why = tokio::time::timeout(Duration::from_secs(5), kept.lost()).await.expect("the loss is reported");
    assert_eq!(why, LeaseLost::Unconfirmed);
    assert!(tokio::time::Instant::now() >= until, "not reported lost before the lease ran out");
}
