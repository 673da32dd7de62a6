//! kvbench: load for any etcd v3 endpoints (raftkv or etcd).
//!
//! - `kvbench run`: one measurement, printed as a Markdown table row and optionally as JSON;
//! - `kvbench watch`: many watchers of one prefix on one member under a fixed write rate;
//! - `kvbench compare`: the side-by-side comparison of a local 3-member raftkv and etcd,
//!   written as report.md, report.json and SVG plots (docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use raftkv_bench::compare::{compare, CompareSpec};
use raftkv_bench::watch::{run_watch, WatchReport, WatchSpec};
use raftkv_bench::{cluster, run, summary, Report, Spec, Workload};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One measurement against running endpoints.
    Run(RunArgs),
    /// Many watchers of one prefix on one member while a writer puts at a fixed rate.
    Watch(WatchArgs),
    /// Many leases kept alive, then many expiring at once under write load.
    Lease(LeaseArgs),
    /// Clients contending for one lock: acquire + release in a closed loop.
    Lock(LockArgs),
    /// Start a 3-member raftkv and a 3-member etcd here and compare them side by side.
    Compare(Box<CompareArgs>),
}

#[derive(clap::Args, Debug)]
struct LeaseArgs {
    /// Comma-separated client URLs (grants, renewals and writes are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Leases kept alive (0: no keep-alive run).
    #[arg(long, default_value_t = 100_000)]
    leases: usize,
    /// Their TTL in seconds.
    #[arg(long, default_value_t = 30)]
    ttl: i64,
    /// How long they are kept alive.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Keep-alive streams.
    #[arg(long, default_value_t = raftkv_bench::lease::KEEP_ALIVE_STREAMS)]
    streams: usize,
    /// Leases expiring at once (0: no mass-expiry run).
    #[arg(long, default_value_t = 0)]
    expiring: usize,
    /// Their TTL in seconds.
    #[arg(long, default_value_t = 10)]
    expiring_ttl: i64,
    /// The members' process ids, for their CPU and RSS.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

#[derive(clap::Args, Debug)]
struct LockArgs {
    /// Comma-separated client URLs (the clients are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// Contending clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Comma-separated client URLs.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// put, get, get-serializable, get-linearizable, get-lease, get-session, get-bounded, txn,
    /// range, mixed-<read %>.
    #[arg(long, default_value = "put")]
    workload: Workload,
    /// Concurrent clients (closed loop), or most requests in flight (open loop).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to run, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Open loop at this many requests per second (latency counted from when each was due).
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args, Debug)]
struct WatchArgs {
    /// The member the watchers watch through.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    watch_endpoint: String,
    /// Where the writer puts (default: the watched member).
    #[arg(long)]
    write_endpoint: Option<String>,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// gRPC connections the streams are spread over.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Puts per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long the writer runs, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait after the last put for every event to arrive.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain: Duration,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The watched member's process id, to report its CPU and RSS.
    #[arg(long)]
    pid: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Where to write report.md, report.json, throughput.svg and latency.svg.
    #[arg(long, default_value = "target/bench-report")]
    out: PathBuf,
    /// Where the members keep their data and logs (wiped first).
    #[arg(long, default_value = "target/bench-clusters")]
    work_dir: PathBuf,
    /// The kv-server binary (default: next to this kvbench).
    #[arg(long)]
    kv_server: Option<PathBuf>,
    /// The etcd binary (default: from PATH, installed from Debian's etcd-server if missing).
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Workloads run on both systems.
    #[arg(long, value_delimiter = ',', default_value = "put,get,get-serializable,txn,range")]
    workloads: Vec<Workload>,
    /// Workloads run on raftkv only (its own read levels).
    #[arg(long, value_delimiter = ',', default_value = "get-lease,get-session,get-bounded")]
    raftkv_only: Vec<Workload>,
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Most gRPC connections per run.
    #[arg(long, default_value_t = 8)]
    max_connections: usize,
    /// Rounds; every figure is the median over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of each run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Distinct keys, all written once before the runs.
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Writers during the leader kill.
    #[arg(long, default_value_t = 16)]
    failover_clients: usize,
    /// Watcher counts of the watch runs (100 watchers per stream), e.g. 1,100,1000,10000;
    /// empty: none.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    watchers: Vec<usize>,
    /// Puts per second during the watch runs.
    #[arg(long, default_value_t = 1000.0)]
    watch_rate: f64,
    /// Length of the writes of each watch run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    watch_duration: Duration,
    /// Which steps run: kv (the workloads at every client count), watch, failover, lease, lock.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kv,watch,failover,lease,lock")]
    parts: Vec<raftkv_bench::compare::Part>,
    /// Leases kept alive in each keep-alive run (0: none).
    #[arg(long, default_value_t = 100_000)]
    leases: usize,
    /// TTL of the kept-alive leases, in seconds.
    #[arg(long, default_value_t = 30)]
    lease_ttl: i64,
    /// How long the leases are kept alive.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Leases expiring at once in each mass-expiry run (0: none).
    #[arg(long, default_value_t = 10_000)]
    expiring: usize,
    /// TTL of the expiring leases, in seconds.
    #[arg(long, default_value_t = 10)]
    expiring_ttl: i64,
    /// Contending client counts of the lock runs.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    lock_clients: Vec<usize>,
    /// Length of each lock run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lock_duration: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(a) => measure(a).await,
        Cmd::Watch(a) => watch(a).await,
        Cmd::Lease(a) => leases(a).await,
        Cmd::Lock(a) => lock(a).await,
        Cmd::Compare(a) => side_by_side(*a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the environment asks of backtraces.
            eprintln!("kvbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn measure(a: RunArgs) -> Result<()> {
    let spec = Spec {
        endpoints: a.endpoints,
        workload: a.workload,
        clients: a.clients,
        connections: a.connections,
        duration: a.duration,
        rate: a.rate,
        key_space: a.key_space,
        value_size: a.value_size,
        progress: !a.quiet,
    };
    let report = run(&spec).await?;
    show(&Report::markdown_header(), &report.markdown_row(), &report, a.json)
}

/// Prints a report as a Markdown table and, when asked, writes it as JSON.
fn show(header: &str, row: &str, report: &impl serde::Serialize, json: Option<PathBuf>) -> Result<()> {
    println!("{header}\n{row}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn watch(a: WatchArgs) -> Result<()> {
    let spec = WatchSpec {
        write_endpoint: a.write_endpoint.unwrap_or_else(|| a.watch_endpoint.clone()),
        watch_endpoint: a.watch_endpoint,
        watchers: a.watchers,
        streams: a.streams,
        connections: a.connections,
        rate: a.rate,
        duration: a.duration,
        value_size: a.value_size,
        member_pid: a.pid,
        drain: a.drain,
    };
    let report = run_watch(&spec).await?;
    show(&WatchReport::markdown_header(), &report.markdown_row(), &report, a.json)
}

async fn leases(a: LeaseArgs) -> Result<()> {
    use raftkv_bench::lease::{run_expiry, run_keep_alive, ExpirySpec, KeepAliveSpec};
    if a.leases > 0 {
        let spec = KeepAliveSpec {
            endpoints: a.endpoints.clone(),
            leases: a.leases,
            ttl: a.ttl,
            duration: a.duration,
            streams: a.streams,
            pids: a.pids.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&run_keep_alive(&spec).await?)?);
    }
    if a.expiring > 0 {
        let spec = ExpirySpec::new(a.endpoints, a.expiring, a.expiring_ttl, 256);
        println!("{}", serde_json::to_string_pretty(&run_expiry(&spec).await?)?);
    }
    Ok(())
}

async fn lock(a: LockArgs) -> Result<()> {
    let spec = raftkv_bench::lock::LockSpec { endpoints: a.endpoints, clients: a.clients, duration: a.duration };
    println!("{}", serde_json::to_string_pretty(&raftkv_bench::lock::run_lock(&spec).await?)?);
    Ok(())
}

async fn side_by_side(a: CompareArgs) -> Result<()> {
    let kv_server = match a.kv_server {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("kv-server"),
    };
    if !kv_server.is_file() {
        bail!("no kv-server binary at {} (build it with `cargo build --release --bin kv-server`)", kv_server.display());
    }
    let etcd = match a.etcd {
        Some(p) => p,
        None => cluster::etcd_binary()?,
    };
    let spec = CompareSpec {
        kv_server: std::path::absolute(kv_server)?,
        etcd,
        work_dir: std::path::absolute(a.work_dir)?,
        workloads: a.workloads,
        raftkv_only: a.raftkv_only,
        clients: a.clients,
        max_connections: a.max_connections,
        rounds: a.rounds,
        duration: a.duration,
        key_space: a.key_space,
        value_size: a.value_size,
        failover_clients: a.failover_clients,
        watchers: a.watchers,
        watch_rate: a.watch_rate,
        watch_duration: a.watch_duration,
        parts: a.parts,
        leases: a.leases,
        lease_ttl: a.lease_ttl,
        lease_duration: a.lease_duration,
        expiring: a.expiring,
        expiring_ttl: a.expiring_ttl,
        lock_clients: a.lock_clients,
        lock_duration: a.lock_duration,
    };
    // Ctrl-C or SIGTERM drops the comparison, and with it the clusters: no member outlives it.
    let comparison = tokio::select! {
        c = compare(spec) => c?,
        _ = interrupted() => bail!("interrupted; the clusters were stopped"),
    };
    summary::write(&comparison, &a.out)?;
    print!("{}", summary::markdown(&comparison));
    eprintln!("kvbench: report written to {}", a.out.display());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
