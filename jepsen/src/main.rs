//! `jepsen`: run one black-box test against real kv-server processes, or clean up after one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftkv_jepsen::nemesis::Fault;
use raftkv_jepsen::run::{Plan, Validity, Workload};

#[derive(Parser)]
#[command(about = "raftkv's black-box harness: real kv-server processes under faults, histories checked")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One test: exit 0 only when the verdict is valid (1 invalid, 2 unknown or harness error).
    Run(RunArgs),
    /// Remove the namespaces, rules and processes left by a run with this prefix.
    Clean {
        #[arg(long, default_value = "rkj")]
        prefix: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The workload.
    #[arg(value_enum, default_value = "register")]
    workload: Workload,
    /// How long the clients run under faults, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    time: Duration,
    /// Faults to draw from, comma-separated (empty: none): kill, kill-leader, kill-majority,
    /// kill-all, pause, pause-leader, partition-leader, partition-halves, partition-bridge,
    /// partition-one-way; with the members' data on lazyfs: power-loss, power-loss-majority,
    /// power-loss-all, disk-full, disk-eio.
    #[arg(long, value_delimiter = ',', default_value = "kill,kill-leader,pause,partition-leader,partition-halves")]
    nemesis: Vec<Fault>,
    /// How long each fault lasts (up to half again as long), and the calm between two.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// After the last heal, how long clients go on before the audit.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Seed of the fault schedule and the clients' choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The kv-server binary (default: next to this one).
    #[arg(long)]
    kv_server: Option<PathBuf>,
    /// Planted bugs for the members, comma-separated (e.g. local_linearizable_reads): the run
    /// should then be invalid. Needs a kv-server built with `--features planted-bugs`.
    #[arg(long)]
    planted: Option<String>,
    /// Put the members' data on lazyfs mounts even without disk faults (power-loss-*, disk-full
    /// and disk-eio always do): a kill -9 run on the same footing as a power-loss run.
    #[arg(long)]
    lazyfs: bool,
    /// Where each run's directory is created.
    #[arg(long, default_value = "target/jepsen")]
    results: PathBuf,
    /// Prefix of the namespaces' names: runs at the same time need different ones.
    #[arg(long, default_value = "rkj")]
    prefix: String,
    /// Second octet of the run's subnet (10.N.0.0/24): runs at the same time need different ones.
    #[arg(long, default_value_t = 77)]
    subnet: u8,
}

fn main() -> ExitCode {
    // Before anything is created: SIGINT and SIGTERM end the run through its teardown.
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, interrupt.clone()) {
            eprintln!("jepsen: cannot handle signal {sig}: {e}");
            return ExitCode::from(2);
        }
    }
    match Cli::parse().command {
        Cmd::Clean { prefix } => {
            let problems = raftkv_jepsen::net::cleanup(&prefix);
            for p in &problems {
                eprintln!("jepsen: {p}");
            }
            if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Cmd::Run(args) => match run(args, interrupt) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("jepsen: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn run(args: RunArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.members >= 1 && args.members <= 9, "--members must be between 1 and 9");
    let kv_server = match args.kv_server {
        Some(p) => p,
        None => std::env::current_exe().context("locating this binary")?.with_file_name("kv-server"),
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let plan = Plan {
        workload: args.workload,
        faults: args.nemesis,
        time: args.time,
        interval: args.interval,
        quiet: args.quiet,
        members: args.members,
        seed,
        kv_server,
        planted: args.planted,
        lazyfs: args.lazyfs,
        results: args.results,
        prefix: args.prefix,
        subnet: args.subnet,
        interrupt,
    };
    let verdict = raftkv_jepsen::run::run(&plan)?;
    for p in &verdict.problems {
        eprintln!("jepsen: {p}");
    }
    println!(
        "{}: {} ops ({} ok, {} failed, {} unknown), {} faults, seed {}; report: {}",
        verdict.validity,
        verdict.ops,
        verdict.outcomes.ok,
        verdict.outcomes.fail,
        verdict.outcomes.unknown,
        verdict.faults,
        verdict.seed,
        verdict.report.display()
    );
    Ok(match verdict.validity {
        Validity::Valid => ExitCode::SUCCESS,
        Validity::Invalid => ExitCode::from(1),
        Validity::Unknown => ExitCode::from(2),
    })
}
