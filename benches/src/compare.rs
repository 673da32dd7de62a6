//! The side-by-side comparison: a 3-member raftkv and a 3-member etcd on this machine, the same
//! load from the same generator, runs alternating between the systems so that a noisy machine
//! slows both alike, and medians over rounds.
//!
//! Order of a comparison:
//! 1. start both clusters and wait for their leaders;
//! 2. load every key of the key space once on each, measuring the data directories before and
//!    after (disk bytes per key);
//! 3. for each round, workload and client count, run raftkv and etcd back to back (the first
//!    system alternates), sampling every member's RSS during the 64-client runs; raftkv's own
//!    read levels (lease, session, bounded) run on raftkv only, as etcd has no equivalent. The
//!    connections go to the members in turn starting at the leader, so a one-client run talks
//!    to the leader on both systems;
//! 4. for each round and watcher count, the watch workload on both systems (`watch`);
//! 5. kill -9 the leader of each system under write load, once per round (`failover`);
//! 6. for each round, the lease workloads on both systems (`lease`): N leases kept alive, then
//!    M leases expiring at once under write load;
//! 7. for each round and each contending client count, the lock workload on both systems
//!    (`lock`): acquire + release of one lock in a closed loop;
//! 8. summarise: the median of each figure over the rounds, and raftkv/etcd ratios.
//!
//! `parts` picks which of the kv runs (3), watch (4), failover (5), lease (6) and lock (7) steps
//! run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kv_api::etcdserverpb::kv_client::KvClient;
use kv_api::etcdserverpb::PutRequest;
use serde::Serialize;

use crate::cluster::{LocalCluster, RssSampler, System};
use crate::failover::{leader_kill, Gap};
use crate::lease::{
    run_expiry, run_keep_alive, ExpiryReport, ExpirySpec, KeepAliveReport, KeepAliveSpec, KEEP_ALIVE_STREAMS,
};
use crate::lock::{run_lock, LockReport, LockSpec};
use crate::report::Report;
use crate::run::{run, Spec};
use crate::watch::{compare_spec, run_watch, WatchReport, WatchRow};
use crate::workload::{key, Workload};
use crate::BenchError;

/// What to compare and where.
#[derive(Clone, Debug, Serialize)]
pub struct CompareSpec {
    /// The kv-server binary.
    pub kv_server: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
    /// Where the members keep their data and logs (wiped at the start).
    pub work_dir: PathBuf,
    /// Workloads run on both systems.
    pub workloads: Vec<Workload>,
    /// Workloads run on raftkv only (its extension read levels).
    pub raftkv_only: Vec<Workload>,
    pub clients: Vec<usize>,
    /// Most gRPC connections per run; a run uses min(clients, this).
    pub max_connections: usize,
    pub rounds: usize,
    pub duration: Duration,
    pub key_space: u64,
    pub value_size: usize,
    /// Writers during the leader kill.
    pub failover_clients: usize,
    /// Watcher counts of the watch runs (none: no watch runs).
    pub watchers: Vec<usize>,
    /// Puts per second during the watch runs.
    pub watch_rate: f64,
    /// Length of the writes of each watch run.
    pub watch_duration: Duration,
    /// Which steps run.
    pub parts: Vec<Part>,
    /// Leases kept alive in the keep-alive runs, their TTL and for how long.
    pub leases: usize,
    pub lease_ttl: i64,
    pub lease_duration: Duration,
    /// Leases expiring at once in the mass-expiry runs, and their TTL.
    pub expiring: usize,
    pub expiring_ttl: i64,
    /// Contending client counts of the lock runs, and each run's length.
    pub lock_clients: Vec<usize>,
    pub lock_duration: Duration,
}

/// A step of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Part {
    /// The KV workloads at every client count.
    Kv,
    Watch,
    Failover,
    Lease,
    Lock,
}

/// The medians over the rounds of one workload at one client count on one system.
#[derive(Clone, Debug, Serialize)]
pub struct Median {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Failed requests, summed over the rounds.
    pub errors: u64,
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub clients: usize,
    pub raftkv: Median,
    /// None for raftkv-only workloads.
    pub etcd: Option<Median>,
}

impl Row {
    /// raftkv ops/s over etcd's.
    pub fn throughput_ratio(&self) -> Option<f64> {
        self.etcd.as_ref().filter(|e| e.ops_per_sec > 0.0).map(|e| self.raftkv.ops_per_sec / e.ops_per_sec)
    }
}

/// Per member of one system.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Footprint {
    /// Highest resident memory seen during the 64-client runs (or the largest client count if
    /// 64 is not among them), in bytes, per member.
    pub peak_rss_bytes: Vec<u64>,
    /// Data directory bytes right after start, after loading the key space, and at the end.
    pub disk_empty_bytes: Vec<u64>,
    pub disk_loaded_bytes: Vec<u64>,
    pub disk_end_bytes: Vec<u64>,
    /// (loaded − empty) / keys, per member.
    pub disk_bytes_per_key: Vec<f64>,
    /// Bytes the disk holding the data directories received while the key space was loaded
    /// into this system (the other one idle), / keys, for the whole cluster: unlike the data
    /// directories' growth, this counts a log written into preallocated segments (etcd's WAL),
    /// pages written again, and the file system's journal. None where the disk cannot be read.
    pub written_bytes_per_key: Option<f64>,
}

/// Everything a comparison measured.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub spec: CompareSpec,
    pub machine: Machine,
    /// Every single run, in the order they ran.
    pub runs: Vec<(System, usize, Report)>,
    pub rows: Vec<Row>,
    pub footprint: BTreeMap<System, Footprint>,
    /// One leader kill per round.
    pub failover: BTreeMap<System, Vec<Gap>>,
    /// Every watch run, and their medians per watcher count.
    pub watch_runs: Vec<(System, WatchReport)>,
    pub watch: Vec<WatchRow>,
    /// Every lease run, in the order they ran.
    pub keep_alive_runs: Vec<(System, KeepAliveReport)>,
    pub expiry_runs: Vec<(System, ExpiryReport)>,
    /// Every lock run, in the order they ran.
    pub lock_runs: Vec<(System, LockReport)>,
}

/// Where the figures come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub raftkv_commit: String,
    pub etcd_version: String,
}

impl Machine {
    fn probe(spec: &CompareSpec) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let out = |prog: &str, args: &[&str]| {
            std::process::Command::new(prog)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "unknown".into())
        };
        Machine {
            date: out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            raftkv_commit: out("git", &["describe", "--always", "--dirty"]),
            etcd_version: crate::cluster::version_of(&spec.etcd).replace("etcd Version: ", "etcd "),
        }
    }
}

/// The client count whose runs are sampled for memory.
pub fn rss_clients(spec: &CompareSpec) -> usize {
    if spec.clients.contains(&64) {
        64
    } else {
        spec.clients.iter().copied().max().unwrap_or(0)
    }
}

/// Runs the whole comparison. Progress goes to stderr, one line per run.
pub async fn compare(spec: CompareSpec) -> Result<Comparison, BenchError> {
    if spec.rounds == 0 || spec.clients.is_empty() || spec.clients.contains(&0) || spec.key_space == 0 {
        return Err(BenchError::Invalid("rounds, client counts and the key space must not be zero".into()));
    }
    let machine = Machine::probe(&spec);
    let systems = [System::Raftkv, System::Etcd];
    let mut clusters = BTreeMap::new();
    for s in systems {
        let program = match s {
            System::Raftkv => &spec.kv_server,
            System::Etcd => &spec.etcd,
        };
        clusters.insert(s, LocalCluster::start(s, program, &spec.work_dir)?);
    }
    let mut footprint: BTreeMap<System, Footprint> = BTreeMap::new();
    for (s, c) in &clusters {
        c.wait_ready(Duration::from_secs(30)).await?;
        // Let the first entries of the new term settle before measuring the empty size.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let f = footprint.entry(*s).or_default();
        f.disk_empty_bytes = c.members.iter().map(|m| m.disk_bytes()).collect();
        let written = crate::cluster::device_written_bytes(&spec.work_dir);
        load(&c.endpoints(), spec.key_space, spec.value_size).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.disk_loaded_bytes = c.members.iter().map(|m| m.disk_bytes()).collect();
        f.written_bytes_per_key = written
            .zip(crate::cluster::device_written_bytes(&spec.work_dir))
            .map(|(before, after)| after.saturating_sub(before) as f64 / spec.key_space as f64);
        f.disk_bytes_per_key = f
            .disk_loaded_bytes
            .iter()
            .zip(&f.disk_empty_bytes)
            .map(|(l, e)| l.saturating_sub(*e) as f64 / spec.key_space as f64)
            .collect();
        f.peak_rss_bytes = vec![0; c.members.len()];
    }

    let plan = if spec.parts.contains(&Part::Kv) { plan(&spec) } else { Vec::new() };
    let watchers = if spec.parts.contains(&Part::Watch) { spec.watchers.clone() } else { Vec::new() };
    let watch_steps = spec.rounds * watchers.len() * 2;
    let bar = ProgressBar::new((plan.len() + watch_steps) as u64 + spec.rounds as u64 * 2);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}").expect("valid template"),
    );
    let mut runs = Vec::new();
    for step in &plan {
        let c = &clusters[&step.system];
        let run_spec = Spec {
            endpoints: c.endpoints_leader_first(Duration::from_secs(30)).await?,
            workload: step.workload,
            clients: step.clients,
            connections: step.clients.min(spec.max_connections.max(1)),
            duration: spec.duration,
            rate: None,
            key_space: spec.key_space,
            value_size: spec.value_size,
            progress: false,
        };
        bar.set_message(format!("round {} {} × {} on {}", step.round + 1, step.workload, step.clients, step.system));
        let sampler = (step.clients == rss_clients(&spec))
            .then(|| RssSampler::start(c.members.iter().map(|m| m.pid()).collect(), Duration::from_millis(200)));
        let report = run(&run_spec).await?;
        if let Some(sampler) = sampler {
            let f = footprint.get_mut(&step.system).expect("footprint per system");
            for (p, seen) in f.peak_rss_bytes.iter_mut().zip(sampler.stop()) {
                *p = (*p).max(seen);
            }
        }
        say(
            &bar,
            format!(
                "round {} {:>16} × {:>3} {:>6}: {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                step.round + 1,
                step.workload.to_string(),
                step.clients,
                step.system.to_string(),
                report.ops_per_sec,
                report.p50_ms,
                report.p99_ms,
                report.errors
            ),
        );
        runs.push((step.system, step.round, report));
        bar.inc(1);
    }

    let mut watch_runs = Vec::new();
    for round in 0..spec.rounds {
        for (k, &watchers) in watchers.iter().enumerate() {
            for s in order(round + k) {
                bar.set_message(format!("round {} {watchers} watchers on {s}", round + 1));
                let c = &clusters[&s];
                let w = compare_spec(c, watchers, spec.watch_rate, spec.watch_duration, spec.value_size).await?;
                let r = run_watch(&w).await?;
                say(
                    &bar,
                    format!(
                        "round {} watch × {:>5} {:>6}: {:>9.0} events/s  delay p50 {:>8.2} ms  p99 {:>8.2} ms  \
                         delivered {}/{}  member CPU {:.2}  RSS {} MiB",
                        round + 1,
                        watchers,
                        s.to_string(),
                        r.events_per_sec,
                        r.delay_p50_ms,
                        r.delay_p99_ms,
                        r.events_delivered,
                        r.events_expected,
                        r.member_cpu_cores.unwrap_or(0.0),
                        r.member_rss_peak_bytes.unwrap_or(0) >> 20
                    ),
                );
                watch_runs.push((s, r));
                bar.inc(1);
            }
        }
    }

    let mut failover: BTreeMap<System, Vec<Gap>> = BTreeMap::new();
    for round in (0..spec.rounds).filter(|_| spec.parts.contains(&Part::Failover)) {
        for s in order(round) {
            bar.set_message(format!("round {} leader kill on {s}", round + 1));
            let c = clusters.get_mut(&s).expect("cluster per system");
            // A cluster that does not recover is a result, not a reason to lose the report.
            let g = leader_kill(c, spec.failover_clients, spec.key_space, spec.value_size)
                .await
                .unwrap_or_else(|e| Gap { failed: Some(e.to_string()), ..Gap::default() });
            if let Some(why) = &g.failed {
                say(&bar, format!("round {} leader kill {s}: {why}", round + 1));
            }
            say(
                &bar,
                format!(
                    "round {} leader kill {:>6}: first write after {} ms, full throughput after {} ms",
                    round + 1,
                    s.to_string(),
                    fmt_opt(g.to_first_write_ms),
                    fmt_opt(g.to_full_throughput_ms)
                ),
            );
            failover.entry(s).or_default().push(g);
            bar.inc(1);
        }
    }
    let (mut keep_alive_runs, mut expiry_runs) = (Vec::new(), Vec::new());
    for round in (0..spec.rounds).filter(|_| spec.parts.contains(&Part::Lease)) {
        for s in order(round) {
            let c = &clusters[&s];
            let pids: Vec<u32> = c.members.iter().filter_map(|m| m.pid()).collect();
            if spec.leases > 0 {
                bar.set_message(format!("round {} {} leases kept alive on {s}", round + 1, spec.leases));
                let k = KeepAliveSpec {
                    endpoints: c.endpoints(),
                    leases: spec.leases,
                    ttl: spec.lease_ttl,
                    duration: spec.lease_duration,
                    streams: KEEP_ALIVE_STREAMS,
                    pids,
                };
                let r = run_keep_alive(&k).await?;
                say(
                    &bar,
                    format!(
                        "round {} keep-alive {:>6}: {} leases, lost {}, {:.0} renewals/s, renew p99 {:.1} ms, \
                         grants {:.0}/s, CPU {:?}",
                        round + 1,
                        s.to_string(),
                        r.leases,
                        r.leases_lost,
                        r.renewals_per_sec,
                        r.renew_p99_ms,
                        r.grants_per_sec,
                        r.member_cpu_cores
                    ),
                );
                keep_alive_runs.push((s, r));
            }
            if spec.expiring > 0 {
                bar.set_message(format!("round {} {} leases expiring on {s}", round + 1, spec.expiring));
                let e = ExpirySpec::new(c.endpoints(), spec.expiring, spec.expiring_ttl, spec.value_size);
                let r = run_expiry(&e).await?;
                say(
                    &bar,
                    format!(
                        "round {} mass expiry {:>6}: {} leases gone {:.1} s after the deadline; put p99 {:.1} ms \
                         before, {:.1} ms during",
                        round + 1,
                        s.to_string(),
                        r.leases,
                        r.expiry_s,
                        r.put_p99_before_ms,
                        r.put_p99_during_ms
                    ),
                );
                expiry_runs.push((s, r));
            }
        }
    }
    let mut lock_runs = Vec::new();
    for round in (0..spec.rounds).filter(|_| spec.parts.contains(&Part::Lock)) {
        for &clients in &spec.lock_clients {
            for s in order(round) {
                bar.set_message(format!("round {} lock, {clients} contending, on {s}", round + 1));
                let l = LockSpec { endpoints: clusters[&s].endpoints(), clients, duration: spec.lock_duration };
                let r = run_lock(&l).await?;
                say(
                    &bar,
                    format!(
                        "round {} lock {:>6}: {clients} contending, {:.0} acquire+release/s, p50 {:.2} ms, p99 {:.2} ms",
                        round + 1,
                        s.to_string(),
                        r.cycles_per_sec,
                        r.p50_ms,
                        r.p99_ms
                    ),
                );
                lock_runs.push((s, r));
            }
        }
    }
    bar.finish_and_clear();
    for (s, c) in &clusters {
        footprint.get_mut(s).expect("footprint per system").disk_end_bytes =
            c.members.iter().map(|m| m.disk_bytes()).collect();
    }
    let rows = summarise(&spec, &runs);
    let watch = crate::watch::summarise(&watchers, &watch_runs);
    Ok(Comparison {
        spec,
        machine,
        runs,
        rows,
        footprint,
        failover,
        watch_runs,
        watch,
        keep_alive_runs,
        expiry_runs,
        lock_runs,
    })
}

/// One progress line: above the bar on a terminal, plainly on stderr otherwise (indicatif drops
/// `println` on a hidden bar, and a log file is where these lines matter most).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.0}"))
}

/// The systems in the order a round runs them: alternating, so neither always goes first.
fn order(round: usize) -> [System; 2] {
    if round.is_multiple_of(2) {
        [System::Raftkv, System::Etcd]
    } else {
        [System::Etcd, System::Raftkv]
    }
}

/// One run of the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Step {
    round: usize,
    workload: Workload,
    clients: usize,
    system: System,
}

/// Every run in order: per round, per workload, per client count, both systems back to back.
fn plan(spec: &CompareSpec) -> Vec<Step> {
    let mut steps = Vec::new();
    for round in 0..spec.rounds {
        for (w, workload) in spec.workloads.iter().chain(&spec.raftkv_only).enumerate() {
            let shared = w < spec.workloads.len();
            for (k, &clients) in spec.clients.iter().enumerate() {
                let systems = if shared { order(round + w + k).to_vec() } else { vec![System::Raftkv] };
                for system in systems {
                    steps.push(Step { round, workload: *workload, clients, system });
                }
            }
        }
    }
    steps
}

/// The median of each figure over the rounds.
fn summarise(spec: &CompareSpec, runs: &[(System, usize, Report)]) -> Vec<Row> {
    let median_of = |system: System, workload: Workload, clients: usize| -> Option<Median> {
        let reports: Vec<&Report> = runs
            .iter()
            .filter(|(s, _, r)| *s == system && r.workload == workload && r.clients == clients)
            .map(|(_, _, r)| r)
            .collect();
        if reports.is_empty() {
            return None;
        }
        let med = |f: fn(&Report) -> f64| median(reports.iter().map(|r| f(r)).collect());
        Some(Median {
            ops_per_sec: med(|r| r.ops_per_sec),
            p50_ms: med(|r| r.p50_ms),
            p99_ms: med(|r| r.p99_ms),
            p999_ms: med(|r| r.p999_ms),
            errors: reports.iter().map(|r| r.errors).sum(),
        })
    };
    let mut rows = Vec::new();
    for workload in spec.workloads.iter().chain(&spec.raftkv_only) {
        for &clients in &spec.clients {
            if let Some(raftkv) = median_of(System::Raftkv, *workload, clients) {
                let etcd = median_of(System::Etcd, *workload, clients);
                rows.push(Row { workload: workload.to_string(), clients, raftkv, etcd });
            }
        }
    }
    rows
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Writes every key of the key space once, 64 writers at a time.
async fn load(endpoints: &[String], key_space: u64, value_size: usize) -> Result<(), BenchError> {
    const WRITERS: u64 = 64;
    let mut channels = Vec::new();
    for url in endpoints {
        channels.push(crate::run::connect(url).await?);
    }
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut kv = KvClient::new(channels[w as usize % channels.len()].clone());
            let value = vec![b'v'; value_size];
            tokio::spawn(async move {
                for n in (w..key_space).step_by(WRITERS as usize) {
                    let req = PutRequest { key: key(n), value: value.clone(), ..Default::default() };
                    kv.put(req).await.map_err(|e| BenchError::Cluster(format!("loading key {n}: {}", e.message())))?;
                }
                Ok::<(), BenchError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| BenchError::Cluster(e.to_string()))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CompareSpec {
        CompareSpec {
            kv_server: "kv-server".into(),
            etcd: "etcd".into(),
            work_dir: "w".into(),
            workloads: vec![Workload::Put, "get".parse().unwrap()],
            raftkv_only: vec!["get-lease".parse().unwrap()],
            clients: vec![1, 64],
            max_connections: 8,
            rounds: 2,
            duration: Duration::from_secs(1),
            key_space: 10,
            value_size: 4,
            failover_clients: 16,
            watchers: vec![],
            watch_rate: 1000.0,
            watch_duration: Duration::from_secs(1),
            parts: vec![Part::Kv],
            leases: 0,
            lease_ttl: 30,
            lease_duration: Duration::from_secs(1),
            expiring: 0,
            expiring_ttl: 10,
            lock_clients: vec![1, 16],
            lock_duration: Duration::from_secs(1),
        }
    }

    #[test]
    fn every_shared_run_has_its_etcd_twin_and_the_first_system_alternates() {
        let steps = plan(&spec());
        // 2 rounds × (2 shared workloads × 2 counts × 2 systems + 1 raftkv-only × 2 counts).
        assert_eq!(steps.len(), 2 * (2 * 2 * 2 + 2));
        let firsts: Vec<System> = steps
            .chunks(1)
            .zip(steps.iter().skip(1))
            .filter(|(a, b)| a[0].workload == b.workload && a[0].clients == b.clients && a[0].system != b.system)
            .map(|(a, _)| a[0].system)
            .collect();
        assert!(firsts.contains(&System::Raftkv) && firsts.contains(&System::Etcd), "{firsts:?}");
        assert!(steps.iter().filter(|s| s.workload.to_string() == "get-lease").all(|s| s.system == System::Raftkv));
    }

    #[test]
    fn medians_take_the_middle_of_the_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
