//! The lease workloads:
//! - **keep-alive**: N leases granted, then all kept alive for a while over a few keep-alive
//!   streams (each renewed every third of its TTL, as etcd's clients do); leases lost, renewal
//!   latency, and every member's CPU and peak RSS;
//! - **mass expiry**: N leases with one key each, granted together and abandoned, so that they
//!   expire at about the same moment, while closed-loop writers put to other keys; put latency
//!   before the leases against during their expiry, and how long the expiry took.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::lease_client::LeaseClient;
use kv_api::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cluster::RssSampler;
use crate::run::connect;
use crate::watch::cpu_seconds;
use crate::workload::prefix_end;
use crate::BenchError;

/// Grants (and revocations) in flight at once.
const GRANTS_IN_FLIGHT: usize = 256;

/// Longest wait for one request's answer: a request the server never answers fails the
/// measurement instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `call` bounded by [`REQUEST_TIMEOUT`].
async fn bounded<T>(call: impl std::future::Future<Output = Result<T, tonic::Status>>) -> Result<T, tonic::Status> {
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(format!("no answer within {REQUEST_TIMEOUT:?}"))))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Keep-alive streams of a comparison's keep-alive runs.
pub const KEEP_ALIVE_STREAMS: usize = 8;

/// One keep-alive measurement.
#[derive(Clone, Debug)]
pub struct KeepAliveSpec {
    pub endpoints: Vec<String>,
    pub leases: usize,
    pub ttl: i64,
    pub duration: Duration,
    /// Keep-alive streams the leases are spread over (one per client process, as etcd's
    /// clients keep every lease of a process on one stream).
    pub streams: usize,
    /// Every member's process, for CPU and RSS.
    pub pids: Vec<u32>,
}

/// What a keep-alive measurement found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeepAliveReport {
    pub leases: usize,
    pub ttl: i64,
    pub duration_s: f64,
    pub grants_per_sec: f64,
    pub renewals: u64,
    pub renewals_per_sec: f64,
    pub renew_p50_ms: f64,
    pub renew_p99_ms: f64,
    /// Leases answered TTL 0 by a renewal or missing from the lease list at the end.
    pub leases_lost: usize,
    /// Renewal streams that failed (the stream is opened again).
    pub stream_errors: u64,
    /// CPU of each member over the keep-alive period, in cores.
    pub member_cpu_cores: Vec<f64>,
    /// Peak RSS of each member during the whole measurement.
    pub member_rss_peak_bytes: Vec<u64>,
}

/// Grants `n` leases of `ttl` through `channels` (server-chosen ids); returns their ids.
async fn grant_all(channels: &[Channel], n: usize, ttl: i64) -> Result<Vec<i64>, BenchError> {
    let grants = futures::stream::iter(0..n)
        .map(|i| {
            let mut lease = LeaseClient::new(channels[i % channels.len()].clone());
            async move { bounded(lease.lease_grant(LeaseGrantRequest { ttl, id: 0 })).await.map(|r| r.into_inner().id) }
        })
        .buffer_unordered(GRANTS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    grants.into_iter().map(|g| g.map_err(|s| BenchError::Cluster(format!("lease grant: {}", s.message())))).collect()
}

/// Revokes `ids`, ignoring leases already gone.
async fn revoke_all(channels: &[Channel], ids: &[i64]) {
    futures::stream::iter(ids.iter().enumerate())
        .for_each_concurrent(GRANTS_IN_FLIGHT, |(i, &id)| {
            let mut lease = LeaseClient::new(channels[i % channels.len()].clone());
            async move {
                let _ = bounded(lease.lease_revoke(LeaseRevokeRequest { id })).await;
            }
        })
        .await;
}

/// Grants the leases, keeps them alive for the spec's duration, checks none was lost, and
/// revokes them.
pub async fn run_keep_alive(spec: &KeepAliveSpec) -> Result<KeepAliveReport, BenchError> {
    if spec.leases == 0 || spec.streams == 0 || spec.ttl <= 0 || spec.endpoints.is_empty() {
        return Err(BenchError::Invalid("leases, streams, TTL and endpoints must not be zero".into()));
    }
    let mut channels = Vec::new();
    for i in 0..spec.streams.max(spec.endpoints.len()) {
        channels.push(connect(&spec.endpoints[i % spec.endpoints.len()]).await?);
    }
    let rss = RssSampler::start(spec.pids.iter().map(|p| Some(*p)).collect(), Duration::from_millis(500));
    let granting = Instant::now();
    let ids = grant_all(&channels, spec.leases, spec.ttl).await?;
    let grants_per_sec = ids.len() as f64 / granting.elapsed().as_secs_f64();
    eprintln!("kvbench: {} leases granted ({grants_per_sec:.0}/s); keeping them alive", ids.len());

    let cpu_before: Vec<Option<f64>> = spec.pids.iter().map(|p| cpu_seconds(*p)).collect();
    let started = Instant::now();
    let until = started + spec.duration;
    let period = Duration::from_secs(spec.ttl as u64) / 3;
    let lost = Arc::new(Mutex::new(HashSet::new()));
    let renewals = Arc::new(AtomicU64::new(0));
    let stream_errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let per_stream = ids.len().div_ceil(spec.streams);
    for (s, chunk) in ids.chunks(per_stream).enumerate() {
        let channel = channels[s % channels.len()].clone();
        let (chunk, lost, renewals, errors) = (chunk.to_vec(), lost.clone(), renewals.clone(), stream_errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            while Instant::now() < until {
                if keep_stream(&channel, &chunk, period, until, &lost, &renewals, &mut hist).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            hist
        }));
    }
    let mut hist = histogram();
    for t in tasks {
        let h = t.await.map_err(|e| BenchError::Cluster(format!("keep-alive task: {e}")))?;
        hist.add(&h).expect("same histogram bounds");
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("kvbench: keep-alive done after {elapsed:.1} s; checking and revoking the leases");
    let member_cpu_cores = spec
        .pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, before)| match (before, cpu_seconds(*p)) {
            (Some(b), Some(a)) => (a - b) / elapsed,
            _ => 0.0,
        })
        .collect();
    // Every lease must still be there.
    let mut lister = LeaseClient::new(channels[0].clone());
    let listed: HashSet<i64> = bounded(lister.lease_leases(LeaseLeasesRequest {}))
        .await
        .map_err(|s| BenchError::Cluster(format!("lease list: {}", s.message())))?
        .into_inner()
        .leases
        .into_iter()
        .map(|l| l.id)
        .collect();
    let mut lost = lost.lock().clone();
    lost.extend(ids.iter().filter(|id| !listed.contains(id)));
    revoke_all(&channels, &ids).await;
    let renewals = renewals.load(Ordering::Relaxed);
    Ok(KeepAliveReport {
        leases: ids.len(),
        ttl: spec.ttl,
        duration_s: elapsed,
        grants_per_sec,
        renewals,
        renewals_per_sec: renewals as f64 / elapsed,
        renew_p50_ms: ms(&hist, 0.5),
        renew_p99_ms: ms(&hist, 0.99),
        leases_lost: lost.len(),
        stream_errors: stream_errors.load(Ordering::Relaxed),
        member_cpu_cores,
        member_rss_peak_bytes: rss.stop(),
    })
}

/// Renews every lease of `ids` once per `period`, spread evenly over it, on one stream, until
/// `until`; records each renewal's latency. Err: the stream failed.
async fn keep_stream(
    channel: &Channel,
    ids: &[i64],
    period: Duration,
    until: Instant,
    lost: &Mutex<HashSet<i64>>,
    renewals: &AtomicU64,
    hist: &mut Histogram<u64>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(1024);
    let sent: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    // Requests flow before the call returns: etcd (grpc-go) sends a stream's response headers
    // only with its first answer, and the call waits for them.
    let sender = {
        let (ids, sent) = (ids.to_vec(), sent.clone());
        tokio::spawn(async move {
            let gap = period / ids.len().max(1) as u32;
            let mut next = Instant::now();
            while Instant::now() < until {
                for &id in &ids {
                    tokio::time::sleep_until(next).await;
                    next += gap;
                    sent.lock().insert(id, Instant::now());
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() || Instant::now() >= until {
                        return;
                    }
                }
            }
        })
    };
    let mut lease = LeaseClient::new(channel.clone());
    let opened = bounded(lease.lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))).await;
    let mut replies = match opened {
        Ok(r) => r.into_inner(),
        Err(e) => {
            sender.abort();
            return Err(e);
        }
    };
    let outcome = loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left + Duration::from_secs(1), replies.message()).await {
            Err(_) => break Ok(()),
            Ok(Ok(Some(r))) => {
                if let Some(at) = sent.lock().remove(&r.id) {
                    let _ = hist.record(at.elapsed().as_micros().max(1) as u64);
                }
                renewals.fetch_add(1, Ordering::Relaxed);
                if r.ttl <= 0 {
                    lost.lock().insert(r.id);
                }
                if Instant::now() >= until && sent.lock().is_empty() {
                    break Ok(());
                }
            }
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(s)) => break Err(s),
        }
    };
    sender.abort();
    outcome
}

/// One mass-expiry measurement.
#[derive(Clone, Debug)]
pub struct ExpirySpec {
    pub endpoints: Vec<String>,
    pub leases: usize,
    pub ttl: i64,
    /// Closed-loop writers putting to other keys throughout.
    pub writers: usize,
    /// How long the writers run alone first (the "before" window).
    pub baseline: Duration,
    pub value_size: usize,
}

/// Writers of a mass-expiry run, and how long they run alone first.
pub const EXPIRY_WRITERS: usize = 16;
pub const EXPIRY_BASELINE: Duration = Duration::from_secs(5);

impl ExpirySpec {
    /// `leases` leases of `ttl` seconds under the standard write load.
    pub fn new(endpoints: Vec<String>, leases: usize, ttl: i64, value_size: usize) -> ExpirySpec {
        ExpirySpec { endpoints, leases, ttl, writers: EXPIRY_WRITERS, baseline: EXPIRY_BASELINE, value_size }
    }
}

/// What a mass-expiry measurement found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExpiryReport {
    pub leases: usize,
    pub ttl: i64,
    /// How long granting the leases and attaching their keys took.
    pub grant_s: f64,
    /// From the first lease's deadline until the last key was gone.
    pub expiry_s: f64,
    pub put_p50_before_ms: f64,
    pub put_p99_before_ms: f64,
    pub put_p50_during_ms: f64,
    pub put_p99_during_ms: f64,
    pub puts_during: u64,
    pub put_errors: u64,
    /// Attached keys still there a minute after the deadline.
    pub keys_left: i64,
}

const EXPIRY_PREFIX: &str = "bench-expiry/";

/// Put latencies, each with when it was sent.
type Samples = Arc<Mutex<Vec<(Instant, u64)>>>;

/// Writers put to their own keys in a closed loop until `stop`.
fn writers(
    channels: &[Channel],
    n: usize,
    value_size: usize,
    stop: Arc<AtomicBool>,
    samples: Samples,
    errors: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let mut kv = KvClient::new(channels[w % channels.len()].clone());
            let (stop, samples, errors) = (stop.clone(), samples.clone(), errors.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("bench-writer/{w}/{}", i % 100);
                    i += 1;
                    let at = Instant::now();
                    let put = PutRequest { key: key.into(), value: vec![b'w'; value_size], ..Default::default() };
                    match bounded(kv.put(put)).await {
                        Ok(_) => samples.lock().push((at, at.elapsed().as_micros().max(1) as u64)),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect()
}

/// Keys left under the expiry prefix.
async fn keys_left(channel: &Channel) -> Result<i64, tonic::Status> {
    let req = RangeRequest {
        key: EXPIRY_PREFIX.into(),
        range_end: prefix_end(EXPIRY_PREFIX.as_bytes()),
        count_only: true,
        ..Default::default()
    };
    Ok(bounded(KvClient::new(channel.clone()).range(req)).await?.into_inner().count)
}

/// Writers run alone for the baseline, then the leases are granted with a key each and
/// abandoned; the measurement ends once every key is gone (or a minute after the deadline).
pub async fn run_expiry(spec: &ExpirySpec) -> Result<ExpiryReport, BenchError> {
    if spec.leases == 0 || spec.ttl <= 0 || spec.writers == 0 || spec.endpoints.is_empty() {
        return Err(BenchError::Invalid("leases, TTL, writers and endpoints must not be zero".into()));
    }
    let mut channels = Vec::new();
    for i in 0..spec.writers.clamp(spec.endpoints.len(), 8) {
        channels.push(connect(&spec.endpoints[i % spec.endpoints.len()]).await?);
    }
    let (stop, samples, errors) = (Arc::new(AtomicBool::new(false)), Samples::default(), Arc::new(AtomicU64::new(0)));
    let writing = writers(&channels, spec.writers, spec.value_size, stop.clone(), samples.clone(), errors.clone());
    let started = Instant::now();
    tokio::time::sleep(spec.baseline).await;
    let granting = Instant::now();
    let attached = futures::stream::iter(0..spec.leases)
        .map(|i| {
            let ch = channels[i % channels.len()].clone();
            let ttl = spec.ttl;
            async move {
                let id =
                    LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?.into_inner().id;
                let put = PutRequest {
                    key: format!("{EXPIRY_PREFIX}{i}").into(),
                    value: b"x".to_vec(),
                    lease: id,
                    ..Default::default()
                };
                bounded(KvClient::new(ch).put(put)).await.map(|_| ())
            }
        })
        .buffer_unordered(GRANTS_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let grant_s = granting.elapsed().as_secs_f64();
    if let Some(Err(e)) = attached.iter().find(|r| r.is_err()) {
        stop.store(true, Ordering::Relaxed);
        return Err(BenchError::Cluster(format!("granting the expiring leases: {}", e.message())));
    }
    let first_deadline = granting + Duration::from_secs(spec.ttl as u64);
    let give_up = first_deadline + Duration::from_secs(60);
    let mut left = i64::MAX;
    while Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(n) = keys_left(&channels[0]).await {
            left = n;
            if n == 0 {
                break;
            }
        }
    }
    let gone = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for w in writing {
        let _ = w.await;
    }
    let (mut before, mut during) = (histogram(), histogram());
    for &(at, us) in samples.lock().iter() {
        if at < granting && at >= started {
            let _ = before.record(us);
        } else if at >= first_deadline && at <= gone {
            let _ = during.record(us);
        }
    }
    Ok(ExpiryReport {
        leases: spec.leases,
        ttl: spec.ttl,
        grant_s,
        expiry_s: gone.saturating_duration_since(first_deadline).as_secs_f64(),
        put_p50_before_ms: ms(&before, 0.5),
        put_p99_before_ms: ms(&before, 0.99),
        put_p50_during_ms: ms(&during, 0.5),
        put_p99_during_ms: ms(&during, 0.99),
        puts_during: during.len(),
        put_errors: errors.load(Ordering::Relaxed),
        keys_left: left,
    })
}
