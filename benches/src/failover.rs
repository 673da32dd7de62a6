//! The leader-kill gap: how long writes stop when the leader dies with SIGKILL.
//!
//! Clients write in a closed loop with a one-second timeout per request, each starting on its
//! own member and moving to the next member after any error or timeout (what a stock etcd
//! client does with several endpoints). After a steady stretch the leader is killed; the
//! completions then give two figures:
//! - **to first write**: from the kill to the first acknowledged write that was *sent* after
//!   the kill (so nothing the old leader committed counts);
//! - **to full throughput**: from the kill to the start of the first half second, beginning at
//!   or after that first write, whose write rate is at least 90% of the rate over the two
//!   seconds before the kill.
//!
//! A request that times out is an unknown outcome, not a failure: it only moves its client.

use std::sync::Arc;
use std::time::Duration;

use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::PutRequest;
use serde::Serialize;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::LocalCluster;
use crate::workload::key;
use crate::BenchError;

/// Writing before the kill, to measure the steady rate.
const STEADY: Duration = Duration::from_secs(3);
/// Watching after the kill; a gap longer than this is reported as not reached.
const AFTER: Duration = Duration::from_secs(8);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Width of the window that must reach the steady rate.
const WINDOW: Duration = Duration::from_millis(500);

/// One leader kill's outcome, in milliseconds after the kill.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Gap {
    /// Writes per second over the two seconds before the kill.
    pub steady_ops_per_sec: f64,
    pub to_first_write_ms: Option<f64>,
    pub to_full_throughput_ms: Option<f64>,
    /// Why the measurement could not finish (e.g. no leader agreed on within 30 s of the
    /// restart); the figures above are then missing.
    pub failed: Option<String>,
}

/// One acknowledged write: when it was sent and when its answer came, since the load began.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub sent: Duration,
    pub done: Duration,
}

/// Computes the gaps from the completions of a run whose leader was killed at `kill`.
pub fn gap(completions: &[Completion], kill: Duration) -> Gap {
    let before = Duration::from_secs(2).min(kill);
    let steady = completions.iter().filter(|c| c.done < kill && c.done >= kill - before).count() as f64
        / before.as_secs_f64().max(f64::MIN_POSITIVE);
    let first = completions.iter().filter(|c| c.sent >= kill).map(|c| c.done).min();
    // Slide the window over the completions after the kill in 10 ms steps.
    let mut after: Vec<Duration> = completions.iter().filter(|c| c.done >= kill).map(|c| c.done).collect();
    after.sort();
    let need = (0.9 * steady * WINDOW.as_secs_f64()).ceil() as usize;
    let mut full = None;
    // The window starts at the first write of the new leadership at the earliest, so a window
    // that still holds part of the silence never counts.
    if let (Some(first), true) = (first, need > 0) {
        let mut start = first;
        let last = after.last().copied().unwrap_or(kill);
        while start + WINDOW <= last + Duration::from_millis(10) {
            let lo = after.partition_point(|d| *d < start);
            let hi = after.partition_point(|d| *d < start + WINDOW);
            if hi - lo >= need {
                full = Some(start);
                break;
            }
            start += Duration::from_millis(10);
        }
    }
    let ms = |d: Duration| (d - kill).as_secs_f64() * 1000.0;
    Gap {
        steady_ops_per_sec: steady,
        to_first_write_ms: first.map(ms),
        to_full_throughput_ms: full.map(ms),
        failed: None,
    }
}

/// Writes with `clients` clients, kills the leader after a steady stretch, measures the gap,
/// then restarts the killed member and waits until the cluster agrees on a leader again.
pub async fn leader_kill(
    cluster: &mut LocalCluster,
    clients: usize,
    key_space: u64,
    value_size: usize,
) -> Result<Gap, BenchError> {
    let leader = cluster.wait_ready(Duration::from_secs(30)).await?;
    let mut channels = Vec::new();
    for url in cluster.endpoints() {
        let ch = Endpoint::from_shared(url.clone())
            .map_err(|e| BenchError::Connect { endpoint: url.clone(), reason: e.to_string() })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        channels.push(ch);
    }
    let channels = Arc::new(channels);
    let start = Instant::now();
    let end = start + STEADY + AFTER;
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let channels = channels.clone();
            let value = vec![b'v'; value_size];
            tokio::spawn(async move { write_until(channels, i, key_space, value, start, end).await })
        })
        .collect();
    tokio::time::sleep_until(start + STEADY).await;
    let kill = start.elapsed();
    cluster.kill(leader);
    let mut completions = Vec::new();
    for t in tasks {
        completions.extend(t.await.unwrap_or_default());
    }
    cluster.restart(leader)?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    Ok(gap(&completions, kill))
}

/// One client: puts until `end`, moving to the next member after an error or a timeout.
async fn write_until(
    channels: Arc<Vec<Channel>>,
    client: usize,
    key_space: u64,
    value: Vec<u8>,
    start: Instant,
    end: Instant,
) -> Vec<Completion> {
    let mut member = client % channels.len();
    let mut done = Vec::new();
    let mut n = client as u64;
    while Instant::now() < end {
        let mut kv = KvClient::new(channels[member].clone());
        let sent = start.elapsed();
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let req = PutRequest { key: key(n % key_space.max(1)), value: value.clone(), ..Default::default() };
        match tokio::time::timeout(REQUEST_TIMEOUT, kv.put(req)).await {
            Ok(Ok(_)) => done.push(Completion { sent, done: start.elapsed() }),
            _ => {
                member = (member + 1) % channels.len();
                // Do not spin on a refusing member while the election runs.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// 1,000 writes/s before a kill at 3 s, nothing for 800 ms, then 1,000/s again.
    #[test]
    fn gap_measures_the_silence_and_the_recovery() {
        let mut c = Vec::new();
        for ms in 0..3000 {
            c.push(Completion { sent: at(ms), done: at(ms + 1) });
        }
        // A write sent before the kill and answered after it does not end the gap.
        c.push(Completion { sent: at(2999), done: at(3500) });
        for ms in 3800..6000 {
            c.push(Completion { sent: at(ms), done: at(ms + 1) });
        }
        let g = gap(&c, at(3000));
        assert!((g.steady_ops_per_sec - 1000.0).abs() < 5.0, "{g:?}");
        assert_eq!(g.to_first_write_ms.map(f64::round), Some(801.0), "{g:?}");
        let full = g.to_full_throughput_ms.expect("recovered");
        assert!((790.0..=810.0).contains(&full), "{g:?}");
    }

    #[test]
    fn a_cluster_that_never_recovers_has_no_gap_figures() {
        let c: Vec<Completion> = (0..3000).map(|ms| Completion { sent: at(ms), done: at(ms + 1) }).collect();
        let g = gap(&c, at(3000));
        assert_eq!(g.to_first_write_ms, None);
        assert_eq!(g.to_full_throughput_ms, None);
    }

    #[test]
    fn half_the_rate_is_not_full_throughput() {
        let mut c: Vec<Completion> = (0..3000).map(|ms| Completion { sent: at(ms), done: at(ms + 1) }).collect();
        c.extend((3100..8000).step_by(2).map(|ms| Completion { sent: at(ms), done: at(ms + 1) }));
        let g = gap(&c, at(3000));
        assert_eq!(g.to_first_write_ms.map(f64::round), Some(101.0));
        assert_eq!(g.to_full_throughput_ms, None, "{g:?}");
    }
}
