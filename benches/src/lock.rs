//! The lock workload: N clients contend for one lock through etcd's v3lock API, each on a lease
//! of its own, each taking the lock and releasing it again in a closed loop, spread over the
//! members. One operation is an acquire and its release; with N contending, its latency
//! includes the wait for the others, which is what a user of a contended lock feels.

use std::time::Duration;

use hdrhistogram::Histogram;
use kv_api::etcdserverpb::lease_client::LeaseClient;
use kv_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use kv_api::v3lockpb::lock_client::LockClient;
use kv_api::v3lockpb::{LockRequest, UnlockRequest};
use serde::Serialize;
use tokio::time::Instant;

use crate::run::connect;
use crate::BenchError;

/// The lock the clients contend for.
const LOCK_NAME: &str = "kvbench-lock";
/// TTL of each client's lease: far longer than a run, so that no lock is lost to expiry.
const LEASE_TTL: i64 = 60;
/// Longest wait for one acquire or release: a lock that never comes fails the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One lock measurement.
#[derive(Clone, Debug)]
pub struct LockSpec {
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub duration: Duration,
}

/// What one lock measurement found.
#[derive(Clone, Debug, Serialize)]
pub struct LockReport {
    pub clients: usize,
    /// Acquire + release cycles completed.
    pub cycles: u64,
    pub cycles_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn status(e: tonic::Status) -> BenchError {
    BenchError::Cluster(format!("lock run: {}", e.message()))
}

async fn bounded<T>(call: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, BenchError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(r) => r.map_err(status),
        Err(_) => Err(BenchError::Cluster(format!("lock run: no answer within {REQUEST_TIMEOUT:?}"))),
    }
}

/// Runs the clients for the spec's duration; fails on the first error (a lock benchmark with
/// failed cycles measures nothing).
pub async fn run_lock(spec: &LockSpec) -> Result<LockReport, BenchError> {
    if spec.clients == 0 || spec.endpoints.is_empty() {
        return Err(BenchError::Invalid("a lock run needs clients and endpoints".into()));
    }
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..spec.clients {
        let channel = connect(&spec.endpoints[i % spec.endpoints.len()]).await?;
        let duration = spec.duration;
        tasks.push(tokio::spawn(async move {
            let mut leases = LeaseClient::new(channel.clone());
            let mut locks = LockClient::new(channel);
            let lease = bounded(leases.lease_grant(LeaseGrantRequest { ttl: LEASE_TTL, id: 0 })).await?.into_inner().id;
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
            while start.elapsed() < duration {
                let t = Instant::now();
                let held = bounded(locks.lock(LockRequest { name: LOCK_NAME.into(), lease })).await?.into_inner();
                bounded(locks.unlock(UnlockRequest { key: held.key })).await?;
                h.record(t.elapsed().as_micros().max(1) as u64).expect("latency within the histogram's bounds");
            }
            bounded(leases.lease_revoke(LeaseRevokeRequest { id: lease })).await?;
            Ok::<_, BenchError>(h)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    for t in tasks {
        let h = t.await.map_err(|e| BenchError::Cluster(format!("lock client: {e}")))??;
        all.add(h).expect("histograms of the same bounds");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
    Ok(LockReport {
        clients: spec.clients,
        cycles: all.len(),
        cycles_per_sec: all.len() as f64 / elapsed,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: all.max() as f64 / 1000.0,
    })
}
