//! Driving the load: closed loop or open loop, with one histogram per client merged at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kv_api::etcdserverpb::kv_client::KvClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::report::Report;
use crate::workload::{Op, Workload};
use crate::BenchError;

/// One measurement.
#[derive(Clone, Debug)]
pub struct Spec {
    pub endpoints: Vec<String>,
    pub workload: Workload,
    /// Concurrent clients (closed loop), or most requests in flight (open loop).
    pub clients: usize,
    /// gRPC connections the clients share, spread over the endpoints.
    pub connections: usize,
    pub duration: Duration,
    /// Open loop: requests per second in total. None: closed loop.
    pub rate: Option<f64>,
    pub key_space: u64,
    pub value_size: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// Latencies up to a minute, 3 significant digits, in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `spec` and summarises it.
pub async fn run(spec: &Spec) -> Result<Report, BenchError> {
    if spec.clients == 0 || spec.connections == 0 || spec.endpoints.is_empty() {
        return Err(BenchError::Invalid("clients, connections and endpoints must not be zero".into()));
    }
    if spec.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Invalid("the rate must be a positive number of requests per second".into()));
    }
    let mut channels = Vec::new();
    for i in 0..spec.connections {
        channels.push(connect(&spec.endpoints[i % spec.endpoints.len()]).await?);
    }
    let bar = progress(spec);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks = match spec.rate {
        None => closed_loop(spec, &channels, &errors),
        Some(rate) => open_loop(spec, &channels, rate, &errors),
    };
    let mut hist = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(Report::new(spec, &hist, errors.load(Ordering::Relaxed), elapsed))
}

/// One gRPC connection to `endpoint`, with Nagle off (small requests must not wait for ACKs).
pub async fn connect(endpoint: &str) -> Result<Channel, BenchError> {
    let connect_err = |reason: String| BenchError::Connect { endpoint: endpoint.to_string(), reason };
    Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| connect_err(e.to_string()))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| connect_err(e.to_string()))
}

fn progress(spec: &Spec) -> ProgressBar {
    if !spec.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(spec.duration.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} s").expect("valid template").progress_chars("=> "),
    );
    bar.set_message(format!("{} × {}", spec.workload, spec.clients));
    let ticker = bar.clone();
    tokio::spawn(async move {
        while !ticker.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ticker.inc(1);
        }
    });
    bar
}

fn client(spec: &Spec, channels: &[Channel], i: usize) -> Op {
    let kv = KvClient::new(channels[i % channels.len()].clone());
    Op::new(kv, spec.workload, spec.key_space, spec.value_size, 0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001))
}

/// A request unanswered after this counts as failed (its outcome is unknown), so a stuck
/// server cannot hold a run open forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request and records its latency since `since` (or counts the failure).
async fn timed(op: &mut Op, since: Instant, h: &mut Histogram<u64>, errors: &AtomicU64) {
    match tokio::time::timeout(REQUEST_TIMEOUT, op.once()).await {
        Ok(Ok(())) => {
            let _ = h.record(since.elapsed().as_micros() as u64);
        }
        Ok(Err(_)) | Err(_) => {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Each client sends its next request when the previous one is answered.
fn closed_loop(spec: &Spec, channels: &[Channel], errors: &Arc<AtomicU64>) -> Vec<JoinHandle<Histogram<u64>>> {
    let deadline = Instant::now() + spec.duration;
    (0..spec.clients)
        .map(|i| {
            let mut op = client(spec, channels, i);
            let errors = errors.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                while Instant::now() < deadline {
                    timed(&mut op, Instant::now(), &mut h, &errors).await;
                }
                h
            })
        })
        .collect()
}

/// Requests are due at a fixed rate; each latency runs from when it was due, so time spent
/// waiting for a free client counts (no coordinated omission). At most `clients` in flight.
fn open_loop(spec: &Spec, channels: &[Channel], rate: f64, errors: &Arc<AtomicU64>) -> Vec<JoinHandle<Histogram<u64>>> {
    let start = Instant::now();
    let total = (rate * spec.duration.as_secs_f64()).ceil() as u64;
    let next = Arc::new(AtomicU64::new(0));
    (0..spec.clients)
        .map(|i| {
            let mut op = client(spec, channels, i);
            let (next, errors) = (next.clone(), errors.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return h;
                    }
                    let due = start + Duration::from_secs_f64(n as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    timed(&mut op, due, &mut h, &errors).await;
                }
            })
        })
        .collect()
}
