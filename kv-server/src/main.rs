//! `kv-server`: parse flags, set up logging and signals, run the member.
//! The first SIGTERM or Ctrl-C drains and exits; a second one exits at once.

use anyhow::Context;
use clap::Parser;
use kv_server::ServerConfig;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a member allocates and frees per request on every
/// thread, and glibc's malloc took a fifth of a member's CPU under 64-client puts.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An error ends the process with status 1 and one line, causes included: `Error: kv-server:
/// stopped serving: ...` (a supervisor's log shows why at a glance).
fn main() -> std::process::ExitCode {
    // Test builds only: the failpoints named in FAILPOINTS, until the process ends.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let served = runtime().context("kv-server: starting the runtime").and_then(|rt| rt.block_on(serve()));
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// tokio's multi-threaded runtime, with the LIFO slot off where the build allows it (the
/// workspace's `.cargo/config.toml` sets `--cfg tokio_unstable`, which that setting needs).
///
/// With the slot, a task woken by the task running runs right after it. When the batcher
/// answers the writes of an entry, each request's task sends its response and wakes its
/// connection's task, which then ran before the next request's task and wrote that one
/// response alone: about two `writev` calls per put on the members. Without the slot, the
/// responses of an entry are written together (one call per put), which made puts and gets at
/// 64 clients faster (docs/benchmarks.md has the measurements).
/// How long a thread that tokio started for blocking work waits for more before it exits.
/// Waits on the state machine's gate go through `block_in_place`, which hands the worker's
/// queue to such a thread; at tokio's default of 10 s, a member serving thousands of lease
/// renewals a second started and ended a thread every half second, and each ending thread
/// left its allocator pages behind: the leader's RSS grew by about 1 KB per renewal
/// (docs/benchmarks.md). Kept, the threads are reused.
#[cfg(not(madsim))]
const BLOCKING_THREAD_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(3600);

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // (The simulation's runtime has no blocking threads to keep.)
    #[cfg(not(madsim))]
    builder.thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE);
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    #[allow(unused_mut)]
    let mut cfg = ServerConfig::parse().resolve().context("kv-server")?;
    if let Ok(names) = std::env::var(PLANTED_ENV) {
        plant(&mut cfg, &names)?;
    }
    kv_server::run(cfg, shutdown_signal()).await.context("kv-server")
}

/// Names the planted bugs a member runs with (jepsen/ shows that its checks catch them). Only
/// a build with the `planted-bugs` feature honours it; any other build refuses to start rather
/// than run clean while the harness believes the bugs are in.
const PLANTED_ENV: &str = "RAFTKV_PLANTED_BUGS";

#[cfg(feature = "planted-bugs")]
fn plant(cfg: &mut ServerConfig, names: &str) -> anyhow::Result<()> {
    cfg.planted = names.parse().map_err(|e: String| anyhow::anyhow!("kv-server: {PLANTED_ENV}: {e}"))?;
    tracing::warn!("running with planted bugs: {:?}", cfg.planted);
    Ok(())
}

#[cfg(not(feature = "planted-bugs"))]
fn plant(_: &mut ServerConfig, _: &str) -> anyhow::Result<()> {
    anyhow::bail!("kv-server: {PLANTED_ENV} is set, but this build has no planted bugs (feature planted-bugs)")
}

/// Resolves on the first SIGTERM/SIGINT and arms a second one to exit immediately.
async fn shutdown_signal() {
    let mut signals = forward_signals();
    signals.recv().await;
    tracing::info!("shutdown requested: draining (signal again to exit at once)");
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

/// SIGTERM and SIGINT, delivered by a signal-hook thread into a channel.
fn forward_signals() -> tokio::sync::mpsc::UnboundedReceiver<i32> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).expect("install signal handlers");
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(sig).is_err() {
                return;
            }
        }
    });
    rx
}
