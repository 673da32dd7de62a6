//! The scenarios and the seed runner: one run per seed, a `sim-digest` line per run, every
//! check applied, and a replay command for a failure.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use madsim::time::{sleep, Instant};
use sha2::{Digest, Sha256};

use crate::audit::{audit, Audit};
use crate::checks::check_all;
use crate::cluster::{Options, Overrides, SimCluster};
use crate::elections::{self, ElectionRun};
use crate::leases::{self, LeaseRun};
use crate::locks::{self, LockRun};
use crate::nemesis::{self, Fault};
use crate::watch::{self, Delivered};
use crate::workload::{self, Record};

/// A named combination of cluster, faults and extra steps.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub members: usize,
    /// The faults the nemesis picks from.
    pub faults: &'static [Fault],
    /// Small snapshot threshold, and a follower down long enough to need a snapshot, which is
    /// sent in small chunks so that the transfer outlasts the election timeout; no member
    /// may start an election meanwhile.
    pub snapshot_catchup: bool,
}

/// The longest a simulated connection waits between tries to send over a cut link (madsim
/// doubles the wait from 1 ms up to 10 s, as TCP backs off its retransmissions), plus slack
/// for the message's own latency and the member's handling of it.
const LINK_RETRY_MAX: Duration = Duration::from_secs(11);

/// Every scenario, each a test of its own.
pub const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "isolate_leader",
        members: 3,
        faults: &[Fault::IsolateLeader, Fault::IsolateOne, Fault::CrashOne],
        snapshot_catchup: false,
    },
    Scenario {
        name: "partitions",
        members: 5,
        faults: &[Fault::Split, Fault::OneWay, Fault::Bridge, Fault::RandomPartition, Fault::IsolateLeader],
        snapshot_catchup: false,
    },
    Scenario { name: "lossy_network", members: 3, faults: &[Fault::DelayLoss, Fault::OneWay], snapshot_catchup: false },
    Scenario {
        name: "crashes",
        members: 3,
        faults: &[Fault::CrashOne, Fault::CrashLeader, Fault::CrashMajority],
        snapshot_catchup: false,
    },
    Scenario { name: "pauses", members: 3, faults: &[Fault::PauseLeader, Fault::PauseOne], snapshot_catchup: false },
    Scenario {
        name: "snapshot_catchup",
        members: 3,
        faults: &[Fault::CrashOne, Fault::IsolateOne],
        snapshot_catchup: true,
    },
    Scenario { name: "random_faults", members: 3, faults: &nemesis::ALL, snapshot_catchup: false },
];

pub fn scenario(name: &str) -> Scenario {
    *SCENARIOS.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no scenario {name}"))
}

/// How long clients run; the nemesis starts a second after them and stops a second before.
const WORKLOAD: Duration = Duration::from_secs(10);

/// What one run produced.
pub struct Run {
    pub history: Vec<Record>,
    pub faults: Vec<String>,
    pub audit: Audit,
    /// What each watcher delivered.
    pub watched: Vec<Delivered>,
    pub leases: LeaseRun,
    pub locks: LockRun,
    pub elections: ElectionRun,
}

impl Scenario {
    /// The scenario inside the simulation: cluster, clients, nemesis, audit.
    pub async fn run(self, mut opts: Options) -> Run {
        opts.members = self.members;
        if self.snapshot_catchup {
            opts.snapshot_count = 10;
            opts.snapshot_chunk_bytes = SNAPSHOT_CATCHUP_CHUNK;
        }
        let c = SimCluster::start(&opts);
        sleep(Duration::from_secs(1)).await;
        let watchers = watch::start(&c);
        let clients = {
            let c = c.clone();
            madsim::task::spawn(async move { workload::run(&c, WORKLOAD).await })
        };
        let started = Instant::now();
        let holders = {
            let c = c.clone();
            madsim::task::spawn(async move { leases::run(&c, WORKLOAD, started).await })
        };
        let lockers = {
            let endpoints = c.endpoints.clone();
            madsim::task::spawn(async move { locks::run(&endpoints, WORKLOAD, started).await })
        };
        let observers = elections::observe(&c.endpoints);
        let candidates = {
            let endpoints = c.endpoints.clone();
            madsim::task::spawn(async move { elections::run(&endpoints, WORKLOAD, started).await })
        };
        sleep(Duration::from_secs(1)).await;
        let mut faults = Vec::new();
        let mut problems = Vec::new();
        if self.snapshot_catchup {
            snapshot_catchup(&c, &mut faults, &mut problems, started).await;
        }
        let left = WORKLOAD.saturating_sub(started.elapsed() + Duration::from_secs(1));
        faults.extend(nemesis::run(&c, self.faults, left, started).await);
        let healed = Instant::now();
        let history = clients.await.expect("clients");
        let held = holders.await.expect("lease holders");
        let attempts = lockers.await.expect("lockers");
        let campaigns = candidates.await.expect("candidates");
        // What a cut link held back is delivered late, on the link's next retry: a write a
        // follower forwarded just before a cut can reach the leader, and commit, long after its
        // client gave up. The histories are read once nothing can still be on its way.
        madsim::time::sleep_until(healed + LINK_RETRY_MAX).await;
        let leases = leases::settle(&c, held).await;
        let locks = locks::settle(&c.control, &c.endpoints, attempts).await;
        let elections = elections::settle(&c.control, &c.endpoints, campaigns, observers.stop()).await;
        let mut others = leases::revisions(&leases);
        others.extend(locks.events.iter().chain(&elections.events).map(|e| e.revision));
        let mut audit = audit(&c, &history, &others).await;
        audit.problems.extend(leases::check(&leases));
        audit.problems.extend(locks::check(&locks));
        audit.problems.extend(elections::check(&elections));
        audit.problems.extend(problems);
        let last = audit.revisions.keys().next_back().copied().unwrap_or(1);
        let watched = watchers.stop(last).await;
        audit.problems.extend(watch::check(&watched, &audit));
        faults.push(c.lease_clock_rates());
        Run { history, faults, audit, watched, leases, locks, elections }
    }
}

/// Bytes per snapshot chunk in the `snapshot_catchup` scenario: a transfer of the few hundred
/// KB its follower misses takes many round trips, longer than an election timeout.
const SNAPSHOT_CATCHUP_CHUNK: usize = 256;

/// The highest term any member reports.
async fn highest_term(c: &SimCluster) -> u64 {
    c.statuses().await.iter().flatten().map(|s| s.raft_term).max().unwrap_or(0)
}

/// A follower is killed for 2 s of writes (far more entries than the leader keeps past its
/// snapshot), restarted, and must catch up by installing a snapshot, with no election on the
/// way: the term is the same once it has.
async fn snapshot_catchup(c: &SimCluster, faults: &mut Vec<String>, problems: &mut Vec<String>, clock: Instant) {
    let leader = c.leader().await;
    let victim = (0..c.len()).find(|&i| Some(i) != leader).expect("a follower");
    c.crash(victim);
    faults.push(format!("{} ms: m{} killed for 2 s (snapshot catch-up)", clock.elapsed().as_millis(), victim + 1));
    sleep(Duration::from_secs(2)).await;
    let term = highest_term(c).await;
    c.restart(victim);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let installed = c.statuses().await[victim].as_ref().map_or(0, |s| s.snapshots_installed);
        if installed > 0 {
            faults.push(format!(
                "{} ms: m{} installed {installed} snapshot(s)",
                clock.elapsed().as_millis(),
                victim + 1
            ));
            let now = highest_term(c).await;
            if now != term {
                problems.push(format!(
                    "an election while m{} caught up by snapshot: term {term} before its restart, {now} after",
                    victim + 1
                ));
            }
            return;
        }
        if Instant::now() > deadline {
            problems.push(format!("m{} did not catch up by snapshot within 3 s of its restart", victim + 1));
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// A run's outcome: its fingerprint and, if a check failed, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub digest: String,
    pub failure: Option<String>,
}

/// Runs `scenario` once with `seed` in this process and checks it. The digest hashes the
/// history, the fault log and the final state; a panic inside the simulation is a failure too.
///
/// Only the first run of a process is reproducible: tokio's and futures' `select!` seed their
/// per-thread branch-order RNG from process-wide counters, so an earlier run changes a later
/// one. [`sweep`] therefore gives every seed a process of its own.
pub fn run_seed(scenario: Scenario, opts: &Options, seed: u64) -> Outcome {
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(scenario.run(opts.clone()))));
    let run = match run {
        Ok(run) => run,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let failure = format!("panicked inside the simulation: {what}");
            return Outcome { digest: hash(&[failure.as_str()]), failure: Some(failure) };
        }
    };
    let history: Vec<String> = run.history.iter().map(|r| format!("{r:?}")).collect();
    let mut parts: Vec<&str> = history.iter().map(String::as_str).collect();
    parts.extend(run.faults.iter().map(String::as_str));
    parts.push(&run.audit.final_state);
    let watched: Vec<String> = run.watched.iter().map(|d| format!("{d:?}")).collect();
    parts.extend(watched.iter().map(String::as_str));
    let leases = format!("{:?}", run.leases);
    parts.push(&leases);
    let coordination = format!("{:?}\n{:?}", run.locks, run.elections);
    parts.push(&coordination);
    let digest = hash(&parts);
    let checked = check_all(&run.history, &run.audit.revisions);
    let failure = match (run.audit.problems.first(), checked) {
        (Some(p), _) => Some(p.clone()),
        (None, Err(e)) => Some(e),
        (None, Ok(())) => None,
    };
    let failure = failure.map(|f| format!("{f}\nfaults: {}", run.faults.join("; ")));
    if let Ok(path) = std::env::var("SIM_DUMP") {
        // Everything a reader needs to find the bad step by hand.
        let mut text = history;
        text.extend(run.audit.revisions.iter().map(|(rev, kv)| format!("revision {rev}: {kv:?}")));
        text.extend(run.faults);
        text.extend(run.leases.held.iter().map(|h| format!("{h:?}")));
        text.extend(run.leases.events.iter().map(|e| format!("lease event {e:?}")));
        text.extend(run.locks.attempts.iter().map(|a| format!("{a:?}")));
        text.extend(run.elections.campaigns.iter().map(|c| format!("{c:?}")));
        text.extend(run.elections.observed.iter().map(|o| format!("observed {o:?}")));
        text.extend(run.locks.events.iter().chain(&run.elections.events).map(|e| format!("{e:?}")));
        let _ = std::fs::write(format!("{path}.{}.{seed}", scenario.name), text.join("\n"));
    }
    Outcome { digest, failure }
}

/// Set in a child process: the one seed it runs.
const CHILD_SEED: &str = "SIM_CHILD_SEED";

/// In a child process started by [`run_isolated`]: runs its seed of `scenario`, prints the
/// outcome for the parent and returns true. Otherwise returns false.
pub fn child(scenario: Scenario, opts: &Options) -> bool {
    let Some(seed) = std::env::var(CHILD_SEED).ok().and_then(|s| s.parse().ok()) else {
        return false;
    };
    if std::env::var_os("RUST_LOG").is_some() {
        // The members' logs on stderr, filtered by RUST_LOG.
        madsim::runtime::init_logger();
    }
    let outcome = run_seed(scenario, opts, seed);
    println!("sim-child-digest {}", outcome.digest);
    if let Some(f) = outcome.failure {
        println!("sim-child-failure {}", f.replace('\n', "\\n"));
    }
    true
}

/// Runs `seed` in a fresh process of this test binary, through the test `test` (which must
/// call [`child`] first), and returns its outcome.
pub fn run_isolated(test: &str, seed: u64) -> Outcome {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1", "-q"]).env(CHILD_SEED, seed.to_string());
    if std::env::var_os("RUST_LOG").is_some() {
        // Logs asked for go straight to the terminal.
        cmd.stderr(std::process::Stdio::inherit());
    }
    let out = cmd.output().expect("starting a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |tag: &str| stdout.lines().find_map(|l| l.strip_prefix(tag)).map(str::to_string);
    match field("sim-child-digest ") {
        Some(digest) => Outcome { digest, failure: field("sim-child-failure ").map(|f| f.replace("\\n", "\n")) },
        None => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let failure = format!(
                "the run's process ended without an outcome ({}): {}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            Outcome { digest: hash(&[failure.as_str()]), failure: Some(failure) }
        }
    }
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The seeds to run: MADSIM_TEST_SEED (default 1) and the MADSIM_TEST_NUM (default 1) after it.
pub fn seeds_from_env() -> std::ops::Range<u64> {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let base = env("MADSIM_TEST_SEED", 1);
    base..base + env("MADSIM_TEST_NUM", 1)
}

/// The one-line command that replays `seed` of the test `test`, with the environment's
/// [`Overrides`].
pub fn replay_command(test: &str, seed: u64, features: &str) -> String {
    format!(
        "{}RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim MADSIM_TEST_SEED={seed} MADSIM_TEST_NUM=1 \
         cargo test -p simulation --release{features} -- --exact {test} --nocapture",
        Overrides::from_env().env_prefix()
    )
}

/// The test body of a scenario: in a child, runs its one seed; otherwise prints the
/// environment's [`Overrides`] (`sim-overrides` line), runs every seed from the environment,
/// each in its own process, printing `sim-digest` lines, and panics on the first failure with
/// the command that replays it.
pub fn sweep(scenario: Scenario, test: &str) {
    if child(scenario, &Options::default()) {
        return;
    }
    println!("sim-overrides {}: {}", scenario.name, Overrides::from_env());
    for seed in seeds_from_env() {
        let outcome = run_isolated(test, seed);
        println!("sim-digest {} seed={seed} {}", scenario.name, outcome.digest);
        if let Some(f) = outcome.failure {
            panic!("{} seed={seed} failed: {f}\nreplay: {}", scenario.name, replay_command(test, seed, ""));
        }
    }
}
