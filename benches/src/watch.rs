//! The watch workload: W watchers on one prefix of one member, a writer putting to that prefix
//! at a fixed rate, and the delay from each put's acknowledgement to its event at every
//! watcher, with the events delivered per second and the watched member's CPU and RSS.
//!
//! The watchers decode only what the measurement needs (each event's revision), so that the
//! load generator, which shares the machine with the members, spends as little as it can on
//! the flood it receives. An event that reaches a watcher before its put's acknowledgement
//! reached the writer counts as a delay of zero.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::watch_request::RequestUnion;
use kv_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::run::connect;
use crate::BenchError;

/// One watch measurement.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    /// The member every watcher watches through.
    pub watch_endpoint: String,
    /// Where the writer puts (the leader, so that no forwarding adds to the delay).
    pub write_endpoint: String,
    pub watchers: usize,
    /// Watch streams the watchers are spread over (etcd's benchmark uses 100 per stream).
    pub streams: usize,
    /// gRPC connections the streams are spread over.
    pub connections: usize,
    /// Puts per second.
    pub rate: f64,
    pub duration: Duration,
    pub value_size: usize,
    /// The watched member's process, for its CPU and RSS.
    pub member_pid: Option<u32>,
    /// Longest wait after the last put for the watchers to receive everything.
    pub drain: Duration,
}

/// What one watch measurement found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchReport {
    pub watchers: usize,
    pub streams: usize,
    pub rate: f64,
    pub puts: u64,
    /// Events owed: every acknowledged put to every watcher.
    pub events_expected: u64,
    pub events_delivered: u64,
    /// Delivered events per second, from the first put to the last event.
    pub events_per_sec: f64,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_max_ms: f64,
    /// The watched member's CPU use from the first put until every event arrived (or the
    /// drain ran out), in cores.
    pub member_cpu_cores: Option<f64>,
    /// The watched member's RSS when the watchers were created and at its peak.
    pub member_rss_start_bytes: Option<u64>,
    pub member_rss_peak_bytes: Option<u64>,
    pub put_errors: u64,
}

impl WatchReport {
    pub fn markdown_header() -> String {
        "| watchers | puts/s | events delivered | events/s | delay p50 ms | delay p99 ms | member CPU | member RSS MiB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|"
            .into()
    }

    pub fn markdown_row(&self) -> String {
        let mib = |b: Option<u64>| b.map_or("—".into(), |b| format!("{:.0}", b as f64 / (1 << 20) as f64));
        format!(
            "| {} | {:.0} | {} of {} | {:.0} | {:.2} | {:.2} | {} | {} → {} |",
            self.watchers,
            self.rate,
            self.events_delivered,
            self.events_expected,
            self.events_per_sec,
            self.delay_p50_ms,
            self.delay_p99_ms,
            self.member_cpu_cores.map_or("—".into(), |c| format!("{c:.2}")),
            mib(self.member_rss_start_bytes),
            mib(self.member_rss_peak_bytes),
        )
    }
}

/// The parts of a WatchResponse the measurement reads; prost skips the rest (keys and values)
/// without copying them. Field numbers are etcd's.
#[derive(Clone, PartialEq, prost::Message)]
struct LeanResponse {
    #[prost(int64, tag = "2")]
    watch_id: i64,
    #[prost(bool, tag = "3")]
    created: bool,
    #[prost(bool, tag = "4")]
    canceled: bool,
    #[prost(string, tag = "6")]
    cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    events: Vec<LeanEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanEvent {
    #[prost(message, optional, tag = "2")]
    kv: Option<LeanKv>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanKv {
    #[prost(int64, tag = "3")]
    mod_revision: i64,
}

const PREFIX: &[u8] = b"watchbench/";
/// Keys the writer cycles through.
const KEYS: u64 = 1000;

/// When each put was acknowledged, by revision: a slot per expected revision, written once by
/// the writer and read by every watcher without a lock.
struct Acks {
    base: i64,
    start: Instant,
    /// Nanoseconds since `start`; 0 while not acknowledged.
    at: Vec<AtomicU64>,
}

impl Acks {
    fn record(&self, revision: i64) {
        if let Some(slot) = usize::try_from(revision - self.base).ok().and_then(|i| self.at.get(i)) {
            slot.store(self.start.elapsed().as_nanos().max(1) as u64, Ordering::Relaxed);
        }
    }

    /// Microseconds from the acknowledgement of `revision` to now (0 if not acknowledged yet).
    fn delay_us(&self, revision: i64, now: Instant) -> u64 {
        let at = usize::try_from(revision - self.base).ok().and_then(|i| self.at.get(i));
        match at.map(|a| a.load(Ordering::Relaxed)) {
            Some(acked) if acked > 0 => {
                let now = now.duration_since(self.start).as_nanos() as u64;
                now.saturating_sub(acked) / 1000
            }
            _ => 0,
        }
    }
}

/// Delays up to ten minutes, 3 significant digits, in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What a stream's reader hands back.
struct Received {
    delays: Histogram<u64>,
    events: u64,
    last_event: Option<Instant>,
}

/// Runs one watch measurement.
pub async fn run_watch(spec: &WatchSpec) -> Result<WatchReport, BenchError> {
    if spec.watchers == 0 || spec.streams == 0 || spec.connections == 0 {
        return Err(BenchError::Invalid("watchers, streams and connections must not be zero".into()));
    }
    if !(spec.rate > 0.0 && spec.rate.is_finite()) {
        return Err(BenchError::Invalid("the rate must be a positive number of puts per second".into()));
    }
    let streams = spec.streams.min(spec.watchers);
    let mut channels = Vec::new();
    for _ in 0..spec.connections.min(streams) {
        channels.push(connect(&spec.watch_endpoint).await?);
    }
    let mut writer = KvClient::new(connect(&spec.write_endpoint).await?);
    let put = |n: u64| PutRequest {
        key: [PREFIX, format!("{:04}", n % KEYS).as_bytes()].concat(),
        value: vec![b'w'; spec.value_size],
        ..Default::default()
    };
    // The revision before the first put: the slots start after it.
    let base = writer
        .put(put(0))
        .await
        .map_err(|e| BenchError::Cluster(format!("the first put failed: {}", e.message())))?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let expected_puts = (spec.rate * spec.duration.as_secs_f64()).ceil() as usize;
    let acks = Arc::new(Acks {
        base: base + 1,
        start: Instant::now(),
        at: (0..expected_puts * 2 + 1024).map(|_| AtomicU64::new(0)).collect(),
    });

    // Create every watch and wait until each stream has all of its own.
    let done = Arc::new(AtomicBool::new(false));
    // Events delivered so far, over every stream.
    let progress = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for s in 0..streams {
        let count = spec.watchers / streams + usize::from(s < spec.watchers % streams);
        let (tx, stream) = open_stream(channels[s % channels.len()].clone(), count).await?;
        senders.push(tx);
        readers.push(tokio::spawn(read_events(stream, acks.clone(), done.clone(), progress.clone())));
    }

    let rss_start = spec.member_pid.and_then(crate::cluster::rss_of_pid);
    let rss_peak = Arc::new(AtomicU64::new(rss_start.unwrap_or(0)));
    let sampling = spec.member_pid.map(|pid| {
        let peak = rss_peak.clone();
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = crate::cluster::rss_of_pid(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let cpu_start = spec.member_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let (puts, put_errors) = write_at_rate(&writer, spec, &acks, put).await;
    let expected = puts * spec.watchers as u64;

    // Wait for the watchers to receive everything, or for the drain to run out.
    let deadline = Instant::now() + spec.drain;
    while progress.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_end = spec.member_pid.and_then(cpu_seconds);
    let cpu_window = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    drop(senders);
    let mut delays = histogram();
    let (mut delivered, mut last) = (0, started);
    for r in readers {
        let r = r.await.map_err(|e| BenchError::Report(format!("a watch reader failed: {e}")))?;
        let _ = delays.add(&r.delays);
        delivered += r.events;
        last = last.max(r.last_event.unwrap_or(started));
    }
    if let Some(s) = sampling {
        let _ = s.await;
    }
    let active = last.duration_since(started).as_secs_f64().max(1e-3);
    let ms = |q: f64| delays.value_at_quantile(q) as f64 / 1000.0;
    Ok(WatchReport {
        watchers: spec.watchers,
        streams,
        rate: spec.rate,
        puts,
        events_expected: expected,
        events_delivered: delivered,
        events_per_sec: delivered as f64 / active,
        delay_p50_ms: ms(0.5),
        delay_p99_ms: ms(0.99),
        delay_max_ms: delays.max() as f64 / 1000.0,
        member_cpu_cores: cpu_start.zip(cpu_end).map(|(a, b)| (b - a) / cpu_window),
        member_rss_start_bytes: rss_start,
        member_rss_peak_bytes: spec.member_pid.map(|_| rss_peak.load(Ordering::Relaxed)),
        put_errors,
    })
}

type LeanStream = tonic::Streaming<LeanResponse>;

/// Opens a watch stream with `count` watches of the prefix, each created.
async fn open_stream(channel: Channel, count: usize) -> Result<(mpsc::Sender<WatchRequest>, LeanStream), BenchError> {
    let failed = |why: String| BenchError::Cluster(format!("watch stream: {why}"));
    let (tx, rx) = mpsc::channel(count + 1);
    let end = crate::workload::prefix_end(PREFIX);
    for _ in 0..count {
        let create = WatchCreateRequest { key: PREFIX.to_vec(), range_end: end.clone(), ..Default::default() };
        let request = WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) };
        tx.send(request).await.map_err(|_| failed("closed before the creates".into()))?;
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| failed(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<WatchRequest, LeanResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let requests = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut stream = grpc.streaming(requests, path, codec).await.map_err(|e| failed(e.message().into()))?.into_inner();
    let mut created = 0;
    while created < count {
        let r = stream
            .message()
            .await
            .map_err(|e| failed(e.message().into()))?
            .ok_or_else(|| failed("ended while creating".into()))?;
        if r.canceled {
            return Err(failed(format!("watch {} refused: {}", r.watch_id, r.cancel_reason)));
        }
        created += usize::from(r.created);
    }
    Ok((tx, stream))
}

/// Reads a stream's events until the measurement is done, recording each event's delay.
async fn read_events(
    mut stream: LeanStream,
    acks: Arc<Acks>,
    done: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> Received {
    let mut got = Received { delays: histogram(), events: 0, last_event: None };
    while !done.load(Ordering::Relaxed) {
        let message = tokio::time::timeout(Duration::from_millis(100), stream.message()).await;
        let Ok(Ok(Some(r))) = message else {
            match message {
                Err(_) => continue,
                _ => break,
            }
        };
        if r.events.is_empty() {
            continue;
        }
        let now = Instant::now();
        let mut measured = 0;
        for e in &r.events {
            let revision = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            // A watch on a member that had not yet applied the first put (it only gives the
            // base revision) also gets that put: not one of the measured puts.
            if revision >= acks.base {
                let _ = got.delays.record(acks.delay_us(revision, now).max(1));
                measured += 1;
            }
        }
        got.events += measured;
        progress.fetch_add(measured, Ordering::Relaxed);
        got.last_event = Some(now);
    }
    got
}

/// Puts at the spec's rate for its duration (open loop: rate × duration puts, each sent when
/// due); returns (acknowledged, failed).
async fn write_at_rate(
    writer: &KvClient<Channel>,
    spec: &WatchSpec,
    acks: &Arc<Acks>,
    put: impl Fn(u64) -> PutRequest,
) -> (u64, u64) {
    let inflight = Arc::new(Semaphore::new(1024));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / spec.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let count = (spec.rate * spec.duration.as_secs_f64()).round() as u64;
    let mut tasks = Vec::new();
    for n in 1..=count {
        tick.tick().await;
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        let (mut c, request) = (writer.clone(), put(n));
        let (acks, ok, failed) = (acks.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            match c.put(request).await {
                Ok(r) => {
                    acks.record(r.into_inner().header.map_or(0, |h| h.revision));
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// A process's user + system CPU time in seconds (Linux's clock ticks are 1/100 s).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The medians over the rounds of one watcher count on one system.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchMedian {
    pub events_per_sec: f64,
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub member_cpu_cores: f64,
    pub member_rss_peak_bytes: f64,
    /// Delivered over owed, summed over the rounds.
    pub delivered: f64,
}

impl WatchMedian {
    fn of(reports: &[&WatchReport]) -> WatchMedian {
        let med = |f: fn(&WatchReport) -> f64| crate::compare::median(reports.iter().map(|r| f(r)).collect());
        let (owed, got) = reports.iter().fold((0, 0), |(o, g), r| (o + r.events_expected, g + r.events_delivered));
        WatchMedian {
            events_per_sec: med(|r| r.events_per_sec),
            delay_p50_ms: med(|r| r.delay_p50_ms),
            delay_p99_ms: med(|r| r.delay_p99_ms),
            member_cpu_cores: med(|r| r.member_cpu_cores.unwrap_or(0.0)),
            member_rss_peak_bytes: med(|r| r.member_rss_peak_bytes.unwrap_or(0) as f64),
            delivered: if owed == 0 { 0.0 } else { got as f64 / owed as f64 },
        }
    }
}

/// One watcher count, both systems.
#[derive(Clone, Debug, Serialize)]
pub struct WatchRow {
    pub watchers: usize,
    pub raftkv: WatchMedian,
    pub etcd: WatchMedian,
}

/// Watchers per stream in the comparison (etcd's own benchmark default).
pub const WATCHERS_PER_STREAM: usize = 100;

/// The comparison's spec of a run with `watchers` on `cluster`: watching through a follower,
/// writing to the leader.
pub async fn compare_spec(
    cluster: &crate::cluster::LocalCluster,
    watchers: usize,
    rate: f64,
    duration: Duration,
    value_size: usize,
) -> Result<WatchSpec, BenchError> {
    let leader = cluster.wait_ready(Duration::from_secs(30)).await?;
    let follower = (leader + 1) % cluster.members.len();
    let endpoints = cluster.endpoints();
    let streams = watchers.div_ceil(WATCHERS_PER_STREAM);
    Ok(WatchSpec {
        watch_endpoint: endpoints[follower].clone(),
        write_endpoint: endpoints[leader].clone(),
        watchers,
        streams,
        connections: streams.min(10),
        rate,
        duration,
        value_size,
        member_pid: cluster.members[follower].pid(),
        drain: Duration::from_secs(60),
    })
}

/// The rows of the comparison from every watch run.
pub fn summarise(watchers: &[usize], runs: &[(crate::cluster::System, WatchReport)]) -> Vec<WatchRow> {
    use crate::cluster::System;
    let of = |system: System, w: usize| {
        let reports: Vec<&WatchReport> =
            runs.iter().filter(|(s, r)| *s == system && r.watchers == w).map(|(_, r)| r).collect();
        WatchMedian::of(&reports)
    };
    watchers
        .iter()
        .map(|&w| WatchRow { watchers: w, raftkv: of(System::Raftkv, w), etcd: of(System::Etcd, w) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_lean_decoding_reads_etcds_field_numbers() {
        use kv_api::etcdserverpb::WatchResponse;
        use kv_api::mvccpb::{Event, KeyValue};
        let kv = KeyValue { key: b"k".to_vec(), value: vec![7; 300], mod_revision: 42, ..Default::default() };
        let full = WatchResponse {
            watch_id: 3,
            created: true,
            events: vec![Event::new(kv_api::mvccpb::event::EventType::Put, Some(kv), None)],
            ..Default::default()
        };
        let lean = LeanResponse::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!((lean.watch_id, lean.created, lean.canceled), (3, true, false));
        assert_eq!(lean.events[0].kv.as_ref().unwrap().mod_revision, 42);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
