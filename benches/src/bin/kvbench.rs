//! kvbench: one measurement against any etcd v3 endpoints (raftkv or etcd), printed as a
//! Markdown table row and optionally written as JSON.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use raftkv_bench::{run, Report, Spec, Workload};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
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
    json: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match measure(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the environment asks of backtraces.
            eprintln!("kvbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn measure(a: Args) -> Result<()> {
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
    println!("{}\n{}", Report::markdown_header(), report.markdown_row());
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
